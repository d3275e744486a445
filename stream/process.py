"""Process-wide settings for the `fdrl` command, made before torch starts its threads.

Two things a small machine running a long session needs and no library sets for it:

- **OpenMP spinning.** torch's OpenMP threads spin after each parallel region (libgomp: 300k
  iterations, about a millisecond) to catch the next one. On 2 cores that spinning steals the CPU
  from OpenCV's face detection and Whisper; not spinning at all (OMP_WAIT_POLICY=PASSIVE) makes
  every small FDRL batch pay thread wake-ups instead (measurably slower per batch). A short
  spin (`GOMP_SPINCOUNT`) keeps both: the threads catch the back-to-back regions of one forward
  pass and sleep between batches.
- **The allocator.** glibc's malloc fragments under the pipeline's buffers, whose sizes change with
  every batch: RSS climbs for a long while before levelling off, while the memory the program
  holds stays flat (`scripts/soak.py` shows both; the README gives the figures).
  jemalloc keeps RSS flat, and lower. An allocator must be in place before the process starts
  (LD_PRELOAD), so the command re-executes itself once with it. `FDRL_MALLOC=system` keeps
  glibc's; without the library (Debian/Ubuntu package `libjemalloc2`) nothing changes.

Settings already in the environment win.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

SPIN_COUNT = 10_000  # libgomp spin iterations before a thread sleeps: tens of microseconds
LIBRARY = "libjemalloc.so.2"
SEARCH = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def configure(reexec: bool = True) -> None:
    """Set the OpenMP spin count, and with `reexec` restart under jemalloc (see the module docstring)."""
    os.environ.setdefault("GOMP_SPINCOUNT", str(SPIN_COUNT))
    if reexec:
        reexec_with_jemalloc()


def jemalloc_path() -> str | None:
    """The jemalloc shared library, if one is installed in a standard place."""
    for folder in SEARCH:
        path = Path(folder) / LIBRARY
        if path.is_file():
            return str(path)
    return None


def reexec_with_jemalloc() -> None:
    """Replace this process by the same command with jemalloc preloaded (same PID); return if
    it is already loaded, opted out of, or not installed."""
    preload = os.environ.get("LD_PRELOAD", "")
    if not sys.platform.startswith("linux") or "jemalloc" in preload or os.environ.get("FDRL_MALLOC") == "system":
        return
    library = jemalloc_path()
    if library is None:
        return
    env = {**os.environ, "LD_PRELOAD": f"{library} {preload}".strip()}
    os.execve(sys.executable, sys.orig_argv, env)
