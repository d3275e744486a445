"""Replay real human speech through the whole pipeline and check that every utterance comes out.

Joins N RAVDESS clips (or any audio files) with pauses into one file per speaker (a session is one
speaker, as live: speaker normalization learns them as it goes), replays each (fast pace) with the
default checkpoint, and reports: clips, utterances found, clips matched one-to-one by time overlap,
word recall of the transcripts, label accuracy (also from each session's 11th clip on, once the
speaker's statistics have settled), and replay speed. Reproduce:

    .venv/bin/python scripts/replay_check.py ../shared/data/ravdess --n 40 --pause 1.5
"""
from __future__ import annotations

import argparse
import asyncio
import random
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from fdrl import config
from fdrl.audio import SAMPLE_RATE, decode_audio, write_wav
from fdrl.data import RAVDESS_STATEMENTS
from fdrl.labels import RAVDESS
from stream.events import Utterance
from stream.pipeline import Recognizer
from stream.sources import FileSource


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


async def replay(paths: list[Path], cfg, checkpoint: Path | None) -> tuple[list[list[Utterance]], float]:
    """Each file as its own session (one after the other, one recognizer): final utterances per file."""
    out = []
    async with Recognizer(cfg, checkpoint) as recognizer:
        t0 = time.perf_counter()
        for path in paths:
            events = [e async for e in recognizer.run(FileSource(path, pace="fast"))]
            out.append([e for e in events if isinstance(e, Utterance) and e.final])
        return out, time.perf_counter() - t0


def speaker(path: Path) -> str:
    """The RAVDESS actor of a clip (the last field of its name); other files are one speaker."""
    return path.stem.split("-")[-1] if path.stem.count("-") == 6 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a RAVDESS root (Actor_NN folders) or a folder of audio files")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--pause", type=float, default=1.5)
    parser.add_argument("--noise-db", type=float, default=float("-inf"),
                        help="white noise in the pauses, dBFS (default: digital silence)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one-session", action="store_true", help="join every clip into one session (speakers mixed)")
    parser.add_argument("--actors", help="comma-separated RAVDESS actor numbers to draw from (e.g. held-out ones)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    parser.add_argument("--checkpoint", type=Path, help="default: the shipped checkpoint (trained on actors 01-20)")
    args = parser.parse_args()

    files = sorted(p for p in args.root.rglob("*") if p.suffix.lower() in {".wav", ".flac", ".mp3"})
    if args.actors:
        wanted = {f"{int(a):02d}" for a in args.actors.split(",")}
        files = [f for f in files if f.stem.split("-")[-1] in wanted]
    random.Random(args.seed).shuffle(files)
    files = files[:args.n]
    rng = np.random.default_rng(args.seed)
    pause = (10 ** (args.noise_db / 20) * rng.standard_normal(int(args.pause * SAMPLE_RATE))).astype(np.float32)
    sessions: dict[str, list[Path]] = {}
    for f in files:
        sessions.setdefault("" if args.one_session else speaker(f), []).append(f)
    spans: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, clips in sessions.items():
            parts, t = [pause], args.pause
            for f in clips:
                audio = decode_audio(f)
                parts += [audio, pause]
                spans.setdefault(name, []).append((t, t + len(audio) / SAMPLE_RATE))
                t += len(audio) / SAMPLE_RATE + args.pause
            paths.append(Path(tmp) / f"session-{name or 'all'}.wav")
            write_wav(paths[-1], np.concatenate(parts))
        results, wall = asyncio.run(replay(paths, config.load(overrides=args.set), args.checkpoint))

    matched, recall_hits, recall_total, correct, late, late_correct, audio_s = 0, 0, 0, 0, 0, 0, 0.0
    for (name, clips), utts in zip(sessions.items(), results):
        audio_s += spans[name][-1][1] + args.pause
        for k, (f, (s, e)) in enumerate(zip(clips, spans[name])):
            inside = [u for u in utts if min(e, u.end) - max(s, u.start) > 0]
            matched += len(inside) == 1
            statement = f.stem.split("-")[4] if f.stem.count("-") == 6 else None
            if statement and len(inside) == 1:
                hit = inside[0].label == RAVDESS[f.stem.split("-")[2]]
                correct += hit
                if k >= 10:
                    late, late_correct = late + 1, late_correct + hit
            if statement in RAVDESS_STATEMENTS and inside:
                heard = set(words(" ".join(u.text for u in inside)))
                # clips are cut at 2.39 s: only the words that survive are expected (the first four)
                expected = RAVDESS_STATEMENTS[statement].split()[:4]
                recall_hits += sum(w in heard for w in expected)
                recall_total += len(expected)
    utts = [u for session in results for u in session]
    print(f"clips {len(files)} in {len(sessions)} sessions  utterances {len(utts)}  clips with exactly one utterance {matched}  "
          f"word recall {recall_hits}/{recall_total} ({100 * recall_hits / max(recall_total, 1):.1f}%)  "
          f"label accuracy {correct}/{len(files)} ({100 * correct / max(len(files), 1):.1f}%), "
          f"from each session's 11th clip on {late_correct}/{late} ({100 * late_correct / max(late, 1):.1f}%)  "
          f"audio {audio_s:.1f} s  replay {wall:.1f} s ({audio_s / wall:.1f}x real time)")
    for u in utts[:5]:
        print(f"  [{u.start:6.2f}-{u.end:6.2f}] {u.label:<10} {u.text}")


if __name__ == "__main__":
    main()
