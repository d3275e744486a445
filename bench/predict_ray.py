"""Throughput of `fdrl predict`: one process against Ray with 1 and 2 workers, on the same job.

    .venv/bin/python -m bench.predict_ray [--copies 2] [--workers 1 2] [--rounds 1]
                                          [--ray-address auto|HOST:PORT] [--cpus-per-worker 1] [--job-dir DIR]

The job is the committed demo clips (demo/clips, 10 espeak sentences) copied `--copies` times into
a temporary folder (20 files by default). Each run is the `fdrl predict` command as a user starts
it, in a fresh process, so every figure includes the interpreter start, the model load and, for
Ray, starting the local cluster and its actors: the wall time of the whole job. With
`--ray-address` the Ray runs join that cluster instead of starting a local one; the job's files
must then be at the same path on every node, so give `--job-dir` a shared folder. Runs take turns within a round, so a neighbour's load skews
each alike; the median over rounds is reported.

Printed: files/s, audio-hours per hour (audio seconds / wall seconds), Ray's overhead against one
process (wall time / one process's - 1) and its speed-up, and whether each run's CSV equals the
single process's (Ray actors compute with as many threads as they have CPUs; one process with all
cores, which changes torch's last digits, see stream/distributed.py).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stream.batch import media_seconds

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ROOT / "demo" / "clips"


def make_job(folder: Path, copies: int) -> list[Path]:
    files = []
    for k in range(copies):
        for clip in sorted(CLIPS.glob("*.wav")):
            files.append(folder / f"{k:02d}-{clip.name}")
            shutil.copy(clip, files[-1])
    return files


def run(job: Path, out: Path, ray: list[str]) -> float:
    """Wall seconds of one `fdrl predict` over `job`."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stream.cli", "predict", str(job), "--out", str(out), *ray],
                          capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench: `fdrl predict {' '.join(ray)}` failed:\n{proc.stderr}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="copies of the 10 demo clips (default 2: 20 files)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; the median is reported (default 1)")
    parser.add_argument("--ray-address", help="join this Ray cluster (auto or HOST:PORT) instead of a local one")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--job-dir", type=Path, help="where the job's files go (default: a temporary folder; "
                                                      "on a cluster, a folder every node sees)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fdrl-bench-", dir=args.job_dir) as tmp:
        job = Path(tmp) / "job"
        job.mkdir()
        files = make_job(job, args.copies)
        audio_s = sum(media_seconds(f) for f in files)
        address = [args.ray_address] if args.ray_address else []
        setups = {"1 process": []}
        for n in args.workers:
            setups[f"Ray, {n} worker{'s' * (n > 1)}"] = ["--ray", *address, "--ray-workers", str(n),
                                                       "--ray-cpus", str(args.cpus_per_worker)]
        walls: dict[str, list[float]] = {name: [] for name in setups}
        for _ in range(args.rounds):
            for name, flags in setups.items():
                walls[name].append(run(job, Path(tmp) / f"{len(walls[name])}-{name}.csv".replace(" ", "_"), flags))
                print(f"bench: {name}: {walls[name][-1]:.1f} s", file=sys.stderr)
        reference = (Path(tmp) / "0-1_process.csv").read_text()
        base = statistics.median(walls["1 process"])
        print(f"{len(files)} files, {audio_s:.1f} s of audio, {os.cpu_count()} cores, load average at the end "
              f"{os.getloadavg()[0]:.2f}, median of {args.rounds} round(s)")
        print(f"| setup | wall s | files/s | audio-hours/hour | vs 1 process | same CSV |")
        print("|---|---:|---:|---:|---:|---|")
        for name in setups:
            wall = statistics.median(walls[name])
            same = (Path(tmp) / f"0-{name}.csv".replace(" ", "_")).read_text() == reference
            ratio = "" if name == "1 process" else f"{wall / base - 1:+.0%} time, {base / wall:.2f}x"
            print(f"| {name} | {wall:.1f} | {len(files) / wall:.2f} | {audio_s / wall:.1f} | {ratio} | {same} |")


if __name__ == "__main__":
    main()
