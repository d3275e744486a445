"""Capacity of `fdrl serve`: how many live speakers one machine holds.

    .venv/bin/python -m bench.load [--n 1 2 4 8] [--audio FILE] [--device cpu|cuda] [--out FILE.json]
                                   [--set SECTION.KEY=VALUE ...]
    .venv/bin/python -m bench.load --compare FILE   # socket labels == replay labels on FILE

It starts `fdrl serve` on an ephemeral loopback port (a subprocess, so its RSS is its own), then for
each N opens N clients at once, each streaming the same speech file (default: the committed demo
session) at real-time pace in 100 ms messages, starting spread over one sentence period as
independent talkers would. Each client is a microphone with a bounded buffer: when the server
does not take its audio in time and the client falls more than `--buffer-s` behind, the oldest
audio is dropped and counted, as a sound card would.

Per N: end of speech → final label (p50, p95; measured by the client: the time the final label
arrived minus the time the end of that speech was available to send), dropped audio, errors
(error events, missing final stats, segments not accounted for, a close other than 1000) and the
server's peak RSS during the round. The capacity is the largest N with p95 ≤ 1.8 s and nothing
dropped or failed. Timings mean something only on an otherwise idle machine: the load average is
reported with each round.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

from fdrl.audio import SAMPLE_RATE
from fdrl.config import PROJECT_ROOT

DEFAULT_AUDIO = PROJECT_ROOT / "demo" / "session" / "audio.wav"
TARGET_P95_S = 1.8
BLOCK_S = 0.1


@dataclass
class Client:
    """What one client saw."""

    latencies: list[float] = field(default_factory=list)
    dropped_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    labels: list[tuple[float, float, str]] = field(default_factory=list)  # final utterances: start, end, label
    batches: list[float] = field(default_factory=list)  # the worker batch each final label came from
    compute: list[float] = field(default_factory=list)  # server side: segment closed → final label


@dataclass(kw_only=True)
class Round:
    """One N: the figures of the module docstring (built by keyword: many are counts that would swap silently)."""

    n: int
    p50_s: float | None
    p95_s: float | None
    utterances: int
    dropped_s: float
    errors: int
    peak_rss_mib: float
    mean_batch: float          # utterances per worker batch: how much micro-batching across streams happened
    cpu_per_audio_s: float     # server CPU seconds per second of audio streamed: what a stream costs, load aside
    compute_p95_s: float | None  # server side, segment closed → final label
    load_avg: float
    passed: bool
    first_errors: list[str]


def read_pcm(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, SAMPLE_RATE):
            raise SystemExit(f"{path}: need a 16 kHz mono 16-bit WAV (fdrl.audio.write_wav writes one)")
        return w.readframes(w.getnframes())


async def stream_client(url: str, pcm: bytes, delay_s: float, buffer_s: float, realtime: bool) -> Client:
    """One live talker: real-time 100 ms messages, a bounded capture buffer, every event read."""
    await asyncio.sleep(delay_s)
    client = Client()
    block = round(BLOCK_S * SAMPLE_RATE) * 2
    async with connect(url, compression=None, max_size=2 ** 22) as ws:
        t0 = time.perf_counter()

        async def send() -> None:
            await ws.send(json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "format": "pcm16"}))
            for k, i in enumerate(range(0, len(pcm), block)):
                if realtime:
                    ready = t0 + (k + 1) * BLOCK_S  # when a microphone would have captured this block
                    await asyncio.sleep(max(0.0, ready - time.perf_counter()))
                    if time.perf_counter() - ready > buffer_s:  # the capture buffer overflowed meanwhile
                        client.dropped_s += BLOCK_S
                        continue
                await ws.send(pcm[i:i + block])
            await ws.send(json.dumps({"type": "end"}))

        sender = asyncio.create_task(send())
        stats = None
        async for text in ws:
            event = json.loads(text)
            if event["type"] == "utterance" and event["final"]:
                client.latencies.append(time.perf_counter() - (t0 + event["end"]))
                client.labels.append((event["start"], event["end"], event["label"]))
                client.batches.append(event["timings"].get("batch", 1.0))
                client.compute.append(event["timings"]["compute"])
            elif event["type"] == "error":
                client.errors.append(event["message"])
            elif event["type"] == "stats":
                stats = event
        await sender
        if ws.close_code != 1000:
            client.errors.append(f"closed {ws.close_code} {ws.close_reason}")
        if stats is None:
            client.errors.append("no final stats")
        elif stats["segments_closed"] != stats["utterances"] + stats["errors"] + stats["no_speech"]:
            client.errors.append(f"segments not accounted for: {stats}")
        else:
            client.dropped_s += stats["audio_dropped_s"]
    return client


class ServerProcess:
    """`fdrl serve` in a subprocess on an ephemeral loopback port, with its memory readable."""

    def __init__(self, overrides: list[str], device: str | None) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        sets = ([f"runtime.device={device}"] if device else []) + overrides
        args = [sys.executable, "-m", "stream.cli", "serve", "--port", "0", *(a for s in sets for a in ("--set", s))]
        self.proc = subprocess.Popen(args, stderr=self.log, text=True)
        deadline = time.monotonic() + 300
        while not (found := re.search(r"listening on ws://127\.0\.0\.1:(\d+)/ws", Path(self.log.name).read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"fdrl serve did not start:\n{Path(self.log.name).read_text()}")
            time.sleep(0.2)
        self.url = f"ws://127.0.0.1:{found.group(1)}/ws"

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]

    def cpu_s(self) -> float:
        """CPU time the server has used so far, user + system, all its threads."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        os.unlink(self.log.name)


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


async def load_round(server: ServerProcess, pcm: bytes, n: int, buffer_s: float, period_s: float) -> Round:
    peak, cpu0 = server.rss_mib(), server.cpu_s()
    clients = asyncio.gather(*(stream_client(server.url, pcm, period_s * i / n, buffer_s, True) for i in range(n)),
                             return_exceptions=True)
    while not clients.done():
        peak = max(peak, server.rss_mib())
        await asyncio.wait({clients}, timeout=0.5)
    done = clients.result()
    failed = [f"client failed: {type(c).__name__}: {c}" for c in done if isinstance(c, BaseException)]
    ok = [c for c in done if isinstance(c, Client)]
    latencies = [x for c in ok for x in c.latencies]
    errors = failed + [e for c in ok for e in c.errors]
    dropped = round(sum(c.dropped_s for c in ok), 3)
    p95 = percentile(latencies, 95)
    passed = not errors and dropped == 0 and p95 is not None and p95 <= TARGET_P95_S
    batches = [b for c in ok for b in c.batches]
    audio_s = n * len(pcm) / 2 / SAMPLE_RATE
    return Round(n=n, p50_s=percentile(latencies, 50), p95_s=p95, utterances=len(latencies), dropped_s=dropped,
                 errors=len(errors), peak_rss_mib=round(peak, 1),
                 mean_batch=round(float(np.mean(batches)), 2) if batches else 0.0,
                 cpu_per_audio_s=round((server.cpu_s() - cpu0) / audio_s, 3),
                 compute_p95_s=percentile([x for c in ok for x in c.compute], 95),
                 load_avg=round(os.getloadavg()[0], 1), passed=passed, first_errors=errors[:3])


async def compare(server: ServerProcess, path: Path, overrides: list[str]) -> dict:
    """The file through the socket (as fast as the server takes it) against an in-process replay."""
    from fdrl import config
    from stream.events import Utterance
    from stream.pipeline import Recognizer
    from stream.sources import FileSource
    socket = await stream_client(server.url, read_pcm(path), 0.0, math.inf, realtime=False)
    async with Recognizer(config.load(overrides=overrides), face=False) as rec:
        replay = [(e.start, e.end, e.label) async for e in rec.run(FileSource(path))
                  if isinstance(e, Utterance) and e.final]
    same = sum(a == b for a, b in zip(socket.labels, replay))
    return {"file": str(path), "socket_utterances": len(socket.labels), "replay_utterances": len(replay),
            "same_span_and_label": same, "identical": socket.labels == replay, "errors": socket.errors}


def table(rounds: list[Round]) -> str:
    lines = ["| N | end of speech → final label p50 | p95 | utterances | dropped audio | errors | server RSS (peak) | mean batch | server CPU per audio second | load avg | ≤ 1.8 s, nothing dropped |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rounds:
        fmt = lambda s: "—" if s is None else f"{1000 * s:.0f} ms"
        lines.append(f"| {r.n} | {fmt(r.p50_s)} | {fmt(r.p95_s)} | {r.utterances} | {r.dropped_s:.1f} s | {r.errors} | "
                     f"{r.peak_rss_mib:.0f} MiB | {r.mean_batch:.2f} | {r.cpu_per_audio_s:.3f} s | {r.load_avg:.1f} | {'yes' if r.passed else 'no'} |")
    passed = [r.n for r in rounds if r.passed]
    summary = f"{max(passed)} live streams" if passed else f"fewer than {min(r.n for r in rounds)} live streams (no round passed)"
    return "\n".join(lines) + f"\n\ncapacity: {summary}"


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    found = re.search(r"Model name:\s+(.+)", out)
    return f"{found.group(1).strip() if found else 'unknown CPU'}, {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrent clients per round")
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO, help="16 kHz mono 16-bit WAV every client streams")
    parser.add_argument("--sentence-period", type=float, default=4.5,
                        help="seconds between the file's sentence starts: the clients' starts spread over one")
    parser.add_argument("--buffer-s", type=float, default=1.0, help="each client's capture buffer before it drops audio")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="runtime.device for the server")
    parser.add_argument("--keep-going", action="store_true", help="run every N even after one fails")
    parser.add_argument("--compare", type=Path, help="instead: check that FILE gets the same labels through the socket as replayed")
    parser.add_argument("--out", type=Path, help="also write the rounds as JSON here")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override for the server")
    args = parser.parse_args()
    server = ServerProcess([*args.set, f"serve.max_connections={max(args.n) + 1}"], args.device)
    try:
        if args.compare:
            print(json.dumps(asyncio.run(compare(server, args.compare, args.set)), indent=1))
            return
        pcm = read_pcm(args.audio)
        rounds: list[Round] = []
        for n in args.n:
            print(f"N = {n} ...", file=sys.stderr, flush=True)
            rounds.append(asyncio.run(load_round(server, pcm, n, args.buffer_s, args.sentence_period)))
            print(json.dumps(asdict(rounds[-1])), file=sys.stderr, flush=True)
            if not rounds[-1].passed and not args.keep_going:
                break
    finally:
        server.stop()
    print(f"{cpu_model()}; audio {args.audio.name} ({len(pcm) / 2 / SAMPLE_RATE:.1f} s) per client\n")
    print(table(rounds))
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu_model(), "rounds": [asdict(r) for r in rounds]}, indent=1))


if __name__ == "__main__":
    main()
