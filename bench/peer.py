"""fdrl-stream against RealtimeSTT, the streaming transcriber to beat, on the same files, taking turns:
from the true end of each sentence to its final transcript (fdrl-stream: its final label, which
comes with the transcript), and the word error rate of those transcripts, as ratios.

    .venv/bin/python -m bench.peer [--rounds 2] [--files plain,hesitant] [--out FILE]

RealtimeSTT 1.1.2 runs in its own throwaway virtualenv (`--venv`, made on first use: torch, its
Python dependencies, no PyAudio since no microphone is opened, Silero from the `silero-vad` wheel,
so nothing is downloaded at run time), with the same Whisper tiny.en int8 folder fdrl-stream
bundles, fed the file in 100 ms chunks at realtime pace (bench/peer_realtimestt.py). Two
configurations of it: its defaults (beam 5, its own post-speech silence) and with the 0.5 s
silence wait fdrl-stream's VAD uses (`vad.hangover_ms`). fdrl-stream runs with config.toml's
defaults as a live stream (`bench.latency.replay`).

Both are scored alike, by when each final transcript came out: it belongs to the last sentence
that had ended by then, its latency is from that sentence's last voiced sample; a second final
for one sentence counts as extra; WER as in bench.latency.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import venv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from stream import process

process.configure(reexec=False)  # as the `fdrl` command does, before torch is imported

import numpy as np

from bench.latency import SpokenFile, replay, test_files, word_error_rate
from bench.run import DEFAULT_CACHE, Dist, dist, log
from fdrl import config
from fdrl.errors import UserError
from fdrl.whisper import _model_folder
from stream.pipeline import Recognizer

CHILD = Path(__file__).with_name("peer_realtimestt.py")
# RealtimeSTT without its optional extras; torch 2.13.0 is the CPU build (a local file on the project's
# machines, PyPI's wheel elsewhere). Silero goes without its torchaudio requirement: the ONNX model is used.
PEER_PACKAGES = [["torch==2.13.0"],
                 ["faster-whisper==1.2.1", "onnxruntime", "webrtcvad-wheels==2.0.14", "halo==0.0.31", "colorama",
                  "scipy", "soundfile", "websockets", "websocket-client"],
                 ["--no-deps", "RealtimeSTT==1.1.2", "silero-vad==6.2.1"]]
PEERS = {"RealtimeSTT (defaults)": {}, "RealtimeSTT (0.5 s silence)": {"post_speech_silence_duration": 0.5}}


def peer_python(folder: Path) -> Path:
    """The throwaway virtualenv's Python, made and filled on first use."""
    python = folder / "bin" / "python"
    if (folder / ".ready").is_file():
        return python
    log(f"making RealtimeSTT's virtualenv in {folder} (once; a few minutes)")
    venv.create(folder, with_pip=True, clear=True)
    for packages in PEER_PACKAGES:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
    (folder / ".ready").write_text("")
    return python


@dataclass
class Scored:
    tool: str
    file: str
    round: int
    finals: int
    extra: int
    missed: int
    latency: Dist | None       # true end of a sentence → its first final transcript
    wer: float
    transcripts: list[str]     # the finals in order, so the words behind a WER can be read in the report


def score_emissions(tool: str, spoken: SpokenFile, k: int, finals: Sequence[tuple[float, str]]) -> Scored:
    """Each final goes to the last sentence that ended before it came out (pure: tested)."""
    ends = [e for _, e in spoken.spans]
    first: dict[int, float] = {}
    extra = 0
    for t, _ in finals:
        owner = int(np.searchsorted(ends, t, side="right")) - 1
        if owner < 0 or owner in first:
            extra += 1
        else:
            first[owner] = t - ends[owner]
    texts = [text for _, text in finals]
    return Scored(tool, spoken.name, k, len(finals), extra, len(ends) - len(first), dist(list(first.values())),
                  word_error_rate(spoken.sentences, texts), texts)


def run_peer(python: Path, spoken: SpokenFile, model: Path, options: dict) -> list[tuple[float, str]]:
    # RealtimeSTT writes realtimesst.log into its working folder: the virtualenv's, not the checkout.
    out = subprocess.run([str(python), str(CHILD.resolve()), str(Path(spoken.path).resolve()), str(model), json.dumps(options)],
                         capture_output=True, text=True, cwd=python.parent.parent)
    if out.returncode != 0:
        raise UserError(f"RealtimeSTT failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    return [tuple(f) for f in json.loads(out.stdout.strip().splitlines()[-1])["finals"]]  # type: ignore[misc]


async def run_fdrl(rec: Recognizer, spoken: SpokenFile) -> list[tuple[float, str]]:
    return [(u.end + u.timings["end_to_label"], u.text) for u in await replay(rec, spoken)]


async def measure(python: Path, files: Sequence[SpokenFile], rounds: int) -> list[Scored]:
    model, _ = _model_folder(config.load().encoders.whisper_model)
    results = []
    async with Recognizer(config.load(), face=False) as rec:
        for k in range(rounds):
            for spoken in files:
                log(f"round {k + 1}/{rounds}: {spoken.name}, fdrl-stream")
                results.append(score_emissions("fdrl-stream", spoken, k, await run_fdrl(rec, spoken)))
                for name, options in PEERS.items():
                    log(f"round {k + 1}/{rounds}: {spoken.name}, {name}")
                    finals = await asyncio.to_thread(run_peer, python, spoken, model, options)
                    results.append(score_emissions(name, spoken, k, finals))
    return results


def summary(results: Sequence[Scored]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r.file for r in results):
        for tool in dict.fromkeys(r.tool for r in results):
            runs = [r for r in results if r.file == name and r.tool == tool]
            p50 = float(np.median([r.latency.p50_ms for r in runs if r.latency])) if any(r.latency for r in runs) else None
            p95 = float(np.median([r.latency.p95_ms for r in runs if r.latency])) if any(r.latency for r in runs) else None
            rows.append({"file": name, "tool": tool, "rounds": len(runs), "finals": sum(r.finals for r in runs),
                         "extra": sum(r.extra for r in runs), "missed": sum(r.missed for r in runs),
                         "p50_ms": p50, "p95_ms": p95, "wer": round(float(np.mean([r.wer for r in runs])), 4)})
        base = next(r for r in rows if r["file"] == name and r["tool"] == "RealtimeSTT (defaults)")
        for r in rows:
            if r["file"] == name:
                r["p50_ratio"] = round(r["p50_ms"] / base["p50_ms"], 3) if r["p50_ms"] and base["p50_ms"] else None
                r["wer_ratio"] = round(r["wer"] / base["wer"], 3) if base["wer"] else None
    return rows


def to_markdown(rows: Sequence[dict]) -> str:
    lines = ["| file | tool | finals (extra, missed) | true end → final p50 / p95 | p50 ratio | WER | WER ratio |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['file']} | {r['tool']} | {r['finals']} ({r['extra']}, {r['missed']}) | "
              f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} ms | {r['p50_ratio']}× | {r['wer']:.1%} | {r['wer_ratio']}× |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--files", default="plain", help="comma-separated: plain, hesitant (bench.latency's files)")
    p.add_argument("--venv", type=Path, default=DEFAULT_CACHE / "peer-venv", help="RealtimeSTT's virtualenv (made if missing)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, help="write the JSON report here")
    a = p.parse_args(argv)
    files = {f.name: f for f in test_files(a.cache_dir)}
    unknown = set(a.files.split(",")) - set(files)
    if unknown:
        p.error(f"unknown file {sorted(unknown)}: choose from {sorted(files)}")
    load = os.getloadavg()
    try:
        python = peer_python(a.venv)
        results = asyncio.run(measure(python, [files[n] for n in a.files.split(",")], a.rounds))
    except (UserError, subprocess.CalledProcessError) as e:
        print(f"bench.peer: error: {e}", file=sys.stderr)
        return 2
    rows = summary(results)
    report = {"command": shlex.join(["python", "-m", "bench.peer", *(argv if argv is not None else sys.argv[1:])]),
              "loadavg_start": [round(x, 2) for x in load], "summary": rows, "runs": [asdict(r) for r in results]}
    text = json.dumps(report, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    else:
        print(text)
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
