"""A longer run of the bad-input fuzz properties (tests/test_fuzz.py), each in its own process.

    .venv/bin/python scripts/fuzz.py --examples 2000

Prints one line per property with its outcome; a property that found a traceback prints
Hypothesis's smallest failing example, and one that crashed the process (a segfault) prints its
exit status. Exit status: 0 when every property held.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROPERTIES = ("test_any_wav_header_decodes_or_is_a_user_error", "test_damaged_flac_and_opus_decode_or_are_a_user_error",
              "test_any_manifest_loads_or_is_a_user_error", "test_any_config_file_loads_or_is_a_user_error")
RUN_ONE = "import sys, tests.test_fuzz as fuzz; getattr(fuzz, sys.argv[1])()"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="examples per property (default 1000)")
    args = parser.parse_args()
    failed = 0
    for name in PROPERTIES:
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", RUN_ONE, name], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "FDRL_FUZZ_EXAMPLES": str(args.examples)})
        seconds = time.monotonic() - start
        verdict = "held" if proc.returncode == 0 else (
            f"CRASHED (exit {proc.returncode})" if proc.returncode >= 128 or proc.returncode < 0 else "FAILED")
        print(f"{name}: {args.examples} examples, {seconds:.0f} s: {verdict}")
        if proc.returncode:
            failed += 1
            print(proc.stdout[-4000:] + proc.stderr[-4000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
