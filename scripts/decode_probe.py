"""Where a word error rate comes from: the segments or the decoding.

bench.peer compares two tools whose VADs cut the same file differently. This script holds the
segments fixed and decodes them several ways: fdrl-stream's own pass (greedy, and beam 5, the
default), and faster-whisper the way RealtimeSTT calls it (its batched pipeline, beam 5, Silero
`vad_filter`, the int8 encoder). Two sources of segments:

* `--files`: those fdrl-stream's live pipeline cuts from bench.latency's files (a fast replay with
  `live=True`, so the segmenter is the live one), with the audio Whisper hears after each; every
  transcript that differs from what was said is printed.
* `--dailydialog DIR --count N`: N everyday sentences (DailyDialog test turns of 6-16 words,
  drawn with a fixed seed) spoken by espeak-ng, voices alternating, every second one with a
  0.35-s pause at its first comma, each clip with 0.2 s of silence before and 0.3 s after. Two
  files of 20 and 10 sentences move a point per word; this is the sample that can tell decoders apart.

Printed per source and decoder: the WER, the time per segment (encoder and decoder; on a quiet
machine) and, against the first decoder, the WER difference with a 95 % interval from a paired
bootstrap over sentences and how many sentences got better and worse.

    .venv/bin/python scripts/decode_probe.py [--files plain,hesitant] [--set encoders.whisper_window_s=30]
    .venv/bin/python scripts/decode_probe.py --files "" --dailydialog ../shared/data/dailydialog --count 200
"""
from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not installed: the checkout's
from stream import process  # noqa: E402

process.configure(reexec=False)  # as the `fdrl` command does, before torch is imported

import jiwer
import numpy as np
from faster_whisper import BatchedInferencePipeline

from bench.latency import normalize, test_files, word_error_rate
from bench.run import DEFAULT_CACHE, VOICES, synthesize
from fdrl import config, data
from fdrl.audio import SAMPLE_RATE, decode_audio
from fdrl.whisper import Whisper
from stream.events import Utterance
from stream.pipeline import Recognizer
from stream.sources import FileSource

PAUSE_S, BEFORE_S, AFTER_S = 0.35, 0.2, 0.3


async def segments(path: str) -> list[tuple[float, float]]:
    """(start, end) seconds of each final utterance the live pipeline cuts from `path`."""
    async with Recognizer(config.load(), face=False) as rec:
        return [(e.start, e.end) async for e in rec.run(FileSource(path), live=True) if isinstance(e, Utterance) and e.final]


def live_cuts(name: str) -> tuple[list[str], list[np.ndarray]]:
    """What was said in one of bench.latency's files, and the segments the live pipeline cuts from
    it, each with the audio after it that Whisper hears too (`vad.asr_tail_ms`)."""
    spoken = {f.name: f for f in test_files(DEFAULT_CACHE)}[name]
    audio = decode_audio(spoken.path)
    vad = config.load().vad
    after = vad.frames(vad.asr_tail_ms) * vad.frame_ms * SAMPLE_RATE // 1000
    return spoken.sentences, [audio[round(s * SAMPLE_RATE):round(e * SAMPLE_RATE) + after]
                              for s, e in asyncio.run(segments(spoken.path))]


def dialogue_clips(root: Path, count: int, seed: int = 0) -> tuple[list[str], list[np.ndarray]]:
    """`count` DailyDialog test turns of 6-16 plain words, and each spoken by espeak-ng (see the module doc)."""
    turns = sorted({it.text for it in data.load_dailydialog(root, "test")
                    if re.fullmatch(r"[A-Za-z ,.?!']+", it.text) and 6 <= len(it.text.split()) <= 16})
    said = random.Random(seed).sample(turns, min(count, len(turns)))
    silence = lambda s: np.zeros(round(s * SAMPLE_RATE), np.float32)  # noqa: E731
    clips = []
    for k, text in enumerate(said):
        voice = VOICES[k % len(VOICES)]
        phrases = text.split(",", 1) if k % 2 and "," in text else [text]
        speech = [part for phrase in phrases for part in (silence(PAUSE_S), synthesize(phrase, voice))][1:]
        clips.append(np.concatenate([silence(BEFORE_S), *speech, silence(AFTER_S)]))
    return said, clips


def errors(said: Sequence[str], heard: Sequence[str]) -> np.ndarray:
    """Word errors (substitutions, deletions, insertions) of each sentence."""
    out = [jiwer.process_words(normalize(s), normalize(h) or "-") for s, h in zip(said, heard)]
    return np.array([o.substitutions + o.deletions + o.insertions for o in out])


def paired_difference(base: np.ndarray, other: np.ndarray, words: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """WER of `other` minus WER of `base` (per-sentence errors over the same sentences), with a 95 %
    interval from 2,000 bootstrap resamples of the sentences."""
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(words), len(words)) for _ in range(2000)]
    boot = [(other[i].sum() - base[i].sum()) / words[i].sum() for i in draws]
    return (other.sum() - base.sum()) / words.sum(), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def report(said: Sequence[str], cuts: Sequence[np.ndarray], decoders: dict[str, Callable[[np.ndarray], str]], show: bool) -> None:
    words = np.array([len(normalize(s).split()) for s in said])
    first = None
    for label, decode in decoders.items():
        decode(cuts[0])  # warm-up: the first call loads and plans
        start = time.perf_counter()
        texts = [decode(cut) for cut in cuts]
        per_segment = (time.perf_counter() - start) / len(cuts) * 1000
        line = f"  {label}: WER {word_error_rate(said, texts):.1%}, {per_segment:.0f} ms per segment"
        if len(texts) == len(said):
            mine = errors(said, texts)
            if first is None:
                first = mine
            else:
                diff, lo, hi = paired_difference(first, mine, words)
                line += (f"; against the first: {diff:+.1%} [95 % {lo:+.1%}, {hi:+.1%}], "
                         f"{(mine < first).sum()} sentences better, {(mine > first).sum()} worse")
        print(line, flush=True)
        if show and len(texts) == len(said):
            for s, heard in zip(said, texts):
                if normalize(s) != normalize(heard):
                    print(f"    {heard!r}  (said: {s!r})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", default="plain,hesitant", help="bench.latency's files, comma-separated (\"\": none)")
    ap.add_argument("--dailydialog", type=Path, help="the DailyDialog folder: also decode --count of its test sentences")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--set", action="append", default=[],
                    help="config override for fdrl-stream's decoders (e.g. encoders.whisper_window_s=30); the segments stay the default's")
    args = ap.parse_args()
    ours = {beam: Whisper.from_config(config.load(overrides=[*args.set, f"asr.beam_size={beam}"]), "cpu") for beam in (1, 5)}
    default_beam = config.load(overrides=args.set).asr.beam_size
    peer = BatchedInferencePipeline(Whisper(layer=0).model)  # CTranslate2's int8 encoder, as RealtimeSTT loads it
    decoders = {
        **{f"fdrl-stream, {'greedy' if beam == 1 else 'beam 5'}{' (default)' if beam == default_beam else ''}":
           (lambda a, w=whisper: w.process([a])[0][1].text) for beam, whisper in ours.items()},
        "RealtimeSTT's call: batched, beam 5, vad_filter": lambda a: " ".join(
            s.text.strip() for s in peer.transcribe(a, language="en", beam_size=5, vad_filter=True, batch_size=16)[0]),
    }
    for name in filter(None, args.files.split(",")):
        said, cuts = live_cuts(name)
        print(f"{name}: {len(cuts)} segments for {len(said)} sentences")
        report(said, cuts, decoders, show=True)
    if args.dailydialog:
        said, clips = dialogue_clips(args.dailydialog, args.count)
        print(f"DailyDialog test, espeak-ng: {len(clips)} sentences, {sum(len(normalize(s).split()) for s in said)} words")
        report(said, clips, decoders, show=False)


if __name__ == "__main__":
    main()
