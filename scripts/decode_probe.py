"""Where a word error rate comes from: the segments or the decoding.

bench.peer compares two tools whose VADs cut the same file differently. This script holds the
segments fixed, those fdrl-stream's live pipeline cuts from bench.latency's files (a fast replay
with `live=True`, so the segmenter is the live one), and decodes them several ways: fdrl-stream's
own pass (greedy and beam 5), and faster-whisper the way RealtimeSTT calls it (its batched
pipeline, beam 5, Silero `vad_filter`, the int8 encoder). Printed per file and decoder: the WER,
the time per segment (encoder and decoder; on a quiet machine) and every transcript that differs
from what was said.

    .venv/bin/python scripts/decode_probe.py [--files plain,hesitant] [--set encoders.whisper_window_s=10]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not installed: the checkout's
from stream import process  # noqa: E402

process.configure(reexec=False)  # as the `fdrl` command does, before torch is imported

from faster_whisper import BatchedInferencePipeline

from bench.latency import normalize, test_files, word_error_rate
from bench.run import DEFAULT_CACHE
from fdrl import config
from fdrl.audio import SAMPLE_RATE, decode_audio
from fdrl.whisper import Whisper
from stream.events import Utterance
from stream.pipeline import Recognizer
from stream.sources import FileSource


async def segments(path: str) -> list[tuple[float, float]]:
    """(start, end) seconds of each final utterance the live pipeline cuts from `path`."""
    async with Recognizer(config.load(), face=False) as rec:
        return [(e.start, e.end) async for e in rec.run(FileSource(path), live=True) if isinstance(e, Utterance) and e.final]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", default="plain,hesitant", help="bench.latency's files, comma-separated")
    ap.add_argument("--set", action="append", default=[],
                    help="config override for fdrl-stream's decoders (e.g. encoders.whisper_window_s=10); the segments stay the default's")
    args = ap.parse_args()
    ours = {beam: Whisper.from_config(config.load(overrides=[*args.set, f"asr.beam_size={beam}"]), "cpu") for beam in (1, 5)}
    peer = BatchedInferencePipeline(Whisper(layer=0).model)  # CTranslate2's int8 encoder, as RealtimeSTT loads it
    decoders = {
        "fdrl-stream, greedy (default)": lambda a: ours[1].process([a])[0][1].text,
        "fdrl-stream, beam 5": lambda a: ours[5].process([a])[0][1].text,
        "RealtimeSTT's call: batched, beam 5, vad_filter": lambda a: " ".join(
            s.text.strip() for s in peer.transcribe(a, language="en", beam_size=5, vad_filter=True, batch_size=16)[0]),
    }
    files = {f.name: f for f in test_files(DEFAULT_CACHE)}
    for name in args.files.split(","):
        spoken = files[name]
        audio = decode_audio(spoken.path)
        cuts = [audio[round(s * SAMPLE_RATE):round(e * SAMPLE_RATE)] for s, e in asyncio.run(segments(spoken.path))]
        print(f"{name}: {len(cuts)} segments for {len(spoken.sentences)} sentences")
        for label, decode in decoders.items():
            decode(cuts[0])  # warm-up: the first call loads and plans
            start = time.perf_counter()
            texts = [decode(cut) for cut in cuts]
            per_segment = (time.perf_counter() - start) / len(cuts) * 1000
            print(f"  {label}: WER {word_error_rate(spoken.sentences, texts):.1%}, {per_segment:.0f} ms per segment")
            if len(texts) == len(spoken.sentences):
                for said, heard in zip(spoken.sentences, texts):
                    if normalize(said) != normalize(heard):
                        print(f"    {heard!r}  (said: {said!r})")


if __name__ == "__main__":
    main()
