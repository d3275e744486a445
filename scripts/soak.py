"""Soak test: replay half an hour of generated speech through one Recognizer and watch its memory.

A long session must not grow: every queue is bounded and nothing keeps per-utterance state, so
after warm-up the resident set (RSS, /proc/self/status VmRSS) should stay flat. The audio is
espeak-ng sentences in groups of one to three (one utterance each; now and then a monologue long
enough to hit `vad.max_utterance_ms`), separated by pauses of 0.8-3 s over a -60 dBFS noise floor.
It is made once and cached under bench/.cache/, then replayed at fast pace.

Memory is sampled as each segment is finished. The JSON report on stdout gives the median RSS over
the minute after the warm-up and over the last minute, the growth between them, the trend after
warm-up, a per-minute series, and the same medians of the memory malloc holds for the program
(glibc), which tells a leak (both grow) from fragmentation (RSS grows, the heap does not). It also
gives the final Stats' accounting (segments closed = utterances + errors + no-speech rejects, and
the events seen agree), wall time and speed in multiples of real time. The exit status is 1 when
the growth reaches 50 MB or the accounting fails.

What it found, and the figures, are in the README ("Memory"): glibc's malloc fragments under fast
replay's varying buffers, so this script, like the `fdrl` command, re-executes itself with jemalloc
when it is installed (stream/process.py; `FDRL_MALLOC=system` keeps glibc's). Reproduce:

    .venv/bin/python scripts/soak.py --minutes 30 --out soak.json
"""
from __future__ import annotations

import os

from stream import process

process.configure(reexec=False)  # as the `fdrl` command does, before torch is imported

import argparse
import asyncio
import ctypes
import hashlib
import json
import math
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fdrl import config
from fdrl.audio import SAMPLE_RATE, decode_audio, to_int16
from fdrl.config import PROJECT_ROOT, Config
from fdrl.errors import UserError
from stream.events import Error, Stats, Utterance
from stream.pipeline import Recognizer
from stream.sources import FileSource

DEFAULT_CACHE = PROJECT_ROOT / "bench" / ".cache"
GROWTH_LIMIT_MB = 50.0
MB = 1e6

SENTENCES = (
    "I am very happy to see you again after all these years",
    "please open the window because it is warm in here",
    "the old dog is sitting quietly by the front door",
    "stop doing that right now I am really angry with you",
    "I miss my grandmother so much and I feel very lonely",
    "wow I did not expect to win the first prize at all",
    "that food smells terrible and it makes me feel sick",
    "I am scared of walking home alone in the dark",
    "the weekly meeting starts at ten tomorrow morning",
    "could you tell me where the train station is",
    "this is honestly the best day of my whole life",
    "he was furious about the long delay at the airport",
    "we lost the game again and everyone is disappointed",
    "remember to turn off the lights before you leave",
    "the children are playing happily in the back garden",
    "I think I lost my wallet on the crowded bus",
)
VOICES = ("en-us", "en-gb", "en-us+f3")
SPEEDS = (145, 175)                 # espeak-ng words per minute
VOICED = 0.01                       # |sample| above this counts as voiced when trimming espeak's silence
NOISE_DB = -60.0                    # noise floor under everything: no digital silence
GAP_S = 0.15                        # between the sentences of one group: the VAD's hangover bridges it
PAUSE_S = (0.8, 3.0)                # between groups: uniform in this range
MONOLOGUE_P, MONOLOGUE_N = 0.05, 7  # now and then a group long enough to be cut at max_utterance_ms
RECIPE = 1                          # bump when the audio recipe changes (part of the cache key)
WINDOW_S = 60.0                     # RSS after warm-up and at the end: medians over this much stream time


@dataclass
class SoakAudio:
    path: str
    duration_s: float
    groups: int          # speech groups: the utterances a perfect VAD would find (monologues count once)


@dataclass
class SoakReport:
    minutes: float
    audio_s: float
    groups: int
    wall_s: float                # replay only (models already loaded)
    x_realtime: float
    utterances: int              # final labels seen
    errors: int                  # Error events seen
    segments_closed: int         # from the final Stats
    no_speech: int
    accounting_ok: bool          # segments closed = utterances + errors + no_speech, and the events agree
    rss_loaded_mb: float         # after the models loaded
    warmup_s: float              # stream time the warm-up ends
    rss_warm_mb: float           # median RSS over the minute after the warm-up
    rss_end_mb: float            # median RSS over the last minute
    growth_mb: float             # rss_end - rss_warm
    rss_peak_mb: float           # VmHWM
    heap_warm_mb: float | None   # the same medians of the memory malloc has handed out and not had back
    heap_end_mb: float | None    #   (glibc only): flat heap with growing RSS is fragmentation, not a leak
    slope_mb_per_h: float        # least-squares RSS trend after warm-up
    series: list[list]           # [minute, median RSS, median heap] for each minute of stream time
    growth_limit_mb: float
    passed: bool
    loadavg: list[float]         # 1, 5, 15 min load at the start: wall time means little on a busy machine
    allocator: str               # glibc, or jemalloc / tcmalloc when preloaded: RSS growth depends on it
    setup: Setup                 # what else the growth depends on: the torch build, the CPU, bf16


@dataclass
class Setup:
    """The configuration a soak ran under, so a figure can be compared with another machine's."""

    torch: str                   # version and build, e.g. 2.14.1+cu130 (the default PyPI wheel) or 2.13.0+cpu
    cpu: str                     # model name (lscpu's)
    avx512_bf16: bool            # native bf16 arithmetic ...
    amx: bool                    # ... and AMX tiles: where bf16 autocast would run natively
    cpu_bf16: bool               # runtime.cpu_bf16: whether the FDRL head ran under bf16 autocast
    cuda: bool                   # a GPU was used

    @classmethod
    def of(cls, cfg: Config) -> Setup:
        model, flags = cpu_info()
        return cls(torch.__version__, model, "avx512_bf16" in flags, "amx_tile" in flags, cfg.runtime.cpu_bf16,
                   cfg.runtime.device != "cpu" and torch.cuda.is_available())


def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags from /proc/cpuinfo ("unknown" and none where it is missing)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown", set()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", "unknown"), set(fields.get("flags", "").split())


def synthesize(text: str, voice: str, speed: int) -> np.ndarray:
    """`text` spoken by espeak-ng, 16 kHz mono float32, espeak's leading and trailing silence cut."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "say.wav"
        try:
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text],
                           check=True, capture_output=True)
        except FileNotFoundError:
            raise UserError("espeak-ng is needed to make the soak audio: sudo apt-get install espeak-ng") from None
        audio = decode_audio(raw)
    voiced = np.flatnonzero(np.abs(audio) > VOICED)
    return audio[voiced[0]:voiced[-1] + 1]


def make_audio(minutes: float, cache_dir: Path = DEFAULT_CACHE, seed: int = 0) -> SoakAudio:
    """`minutes` of grouped sentences and pauses (see the module docstring), written to a cached WAV.

    The file is written as it is made, so even hours of it take only the memory of the sentence clips.
    """
    recipe = [RECIPE, SENTENCES, VOICES, SPEEDS, NOISE_DB, GAP_S, PAUSE_S, MONOLOGUE_P, MONOLOGUE_N, float(minutes), seed]
    key = hashlib.blake2b(json.dumps(recipe).encode(), digest_size=6).hexdigest()
    wav_path, meta_path = cache_dir / f"soak-{key}.wav", cache_dir / f"soak-{key}.json"
    if wav_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return SoakAudio(str(wav_path), meta["duration_s"], meta["groups"])

    rng = np.random.default_rng(seed)
    choices = [(text, voice, speed) for text in SENTENCES for voice in VOICES for speed in SPEEDS]
    clips: dict[int, np.ndarray] = {}  # synthesized on first use: a short soak needs only a few
    noise_rms = 10 ** (NOISE_DB / 20)

    def clip(k: int) -> np.ndarray:
        if k not in clips:
            clips[k] = synthesize(*choices[k])
        return clips[k]

    def with_floor(audio: np.ndarray) -> bytes:
        return to_int16(audio + noise_rms * rng.standard_normal(len(audio)).astype(np.float32))

    def silence(seconds: float) -> np.ndarray:
        return np.zeros(round(seconds * SAMPLE_RATE), np.float32)

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = wav_path.with_suffix(".tmp")
    samples, groups = 0, 0
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        while samples < minutes * 60 * SAMPLE_RATE:
            n = MONOLOGUE_N if rng.random() < MONOLOGUE_P else int(rng.integers(1, 4))
            parts = [silence(rng.uniform(*PAUSE_S))]
            for k in range(n):
                parts += [silence(GAP_S)] if k else []
                parts.append(clip(int(rng.integers(len(choices)))))
            chunk = np.concatenate(parts)
            out.writeframes(with_floor(chunk))
            samples += len(chunk)
            groups += 1
        tail = silence(PAUSE_S[1])  # the last group's segment closes before the file ends
        out.writeframes(with_floor(tail))
        samples += len(tail)
    os.replace(tmp, wav_path)
    audio = SoakAudio(str(wav_path), round(samples / SAMPLE_RATE, 3), groups)
    meta_path.write_text(json.dumps({"duration_s": audio.duration_s, "groups": audio.groups}))
    return audio


def rss_mb(field: str = "VmRSS") -> float:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: peak) in MB (10^6 bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) * 1024 / MB, 1)
    raise UserError(f"/proc/self/status has no {field} line (the soak test needs Linux)")


def allocator() -> str:
    """Which malloc this process runs on: "jemalloc" or "tcmalloc" when preloaded (LD_PRELOAD), else "glibc"."""
    maps = Path("/proc/self/maps").read_text()
    return next((name for name in ("jemalloc", "tcmalloc") if f"lib{name}" in maps), "glibc")


def heap_probe() -> Callable[[], float | None]:
    """A function giving the MB malloc has handed out and not had back (glibc's mallinfo2: heap chunks
    in use plus mmapped ones); one giving None where that is not available (another malloc, not Linux)."""
    if allocator() != "glibc":
        return lambda: None
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return lambda: None
    mallinfo2.restype = MallInfo2

    def heap() -> float:
        info = mallinfo2()
        return round((info.uordblks + info.hblkhd) / MB, 1)
    return heap


def slope_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (stream seconds, MB) samples, in MB per hour; 0 for fewer than two."""
    if len(samples) < 2:
        return 0.0
    t, mb = np.array(samples).T
    return float(np.polyfit(t, mb, 1)[0] * 3600)


@dataclass
class Sample:
    t: float              # stream seconds of the segment just finished
    rss: float            # MB
    heap: float | None    # MB malloc'd and not freed (glibc); None elsewhere


def median_between(samples: list[Sample], lo: float, hi: float, field: str) -> float | None:
    """Median of `field` over the samples with lo <= t < hi (None when there are none or it is unknown)."""
    values = [getattr(x, field) for x in samples if lo <= x.t < hi and getattr(x, field) is not None]
    return round(float(np.median(values)), 1) if values else None


async def replay(cfg: Config, audio: SoakAudio, checkpoint: Path | None, warmup_s: float) -> SoakReport:
    """Replay `audio` at fast pace through one Recognizer, sampling memory as each segment is finished."""
    loadavg = [round(x, 2) for x in os.getloadavg()]
    heap = heap_probe()
    async with Recognizer(cfg, checkpoint, face=False) as recognizer:
        rss_loaded = rss_mb()
        samples: list[Sample] = []
        utterances = errors = 0
        final: Stats | None = None
        started = time.perf_counter()
        async for event in recognizer.run(FileSource(audio.path, pace="fast")):
            if isinstance(event, Stats):
                final = event  # the last one is the run's final Stats
                continue
            if isinstance(event, Utterance) and event.final:
                utterances += 1
                t = event.end
            elif isinstance(event, Error):
                errors += 1
                t = event.time
            else:
                continue
            # Sampled as each segment is finished, at its stream time: in fast replay the VAD runs
            # ahead of inference (and so do Stats times), the labels mark how far the replay really is.
            samples.append(Sample(t, rss_mb(), heap()))
        wall = time.perf_counter() - started
    if final is None:
        raise RuntimeError("the run ended without a Stats event")
    last = samples[-1].t if samples else 0.0
    if last < warmup_s:
        raise RuntimeError(f"no segment was finished after the warm-up ({warmup_s:.0f} s of {audio.duration_s:.0f} s)")
    accounting_ok = (final.segments_closed == final.utterances + final.errors + final.no_speech
                     and utterances == final.utterances and errors == final.errors)
    # RSS swings by tens of MB with the batch being computed, so one sample says little:
    # medians over the minute after the warm-up and over the last minute.
    warm = (warmup_s, warmup_s + WINDOW_S)
    end = (max(warmup_s, last - WINDOW_S), math.inf)
    rss_warm, rss_end = median_between(samples, *warm, "rss"), median_between(samples, *end, "rss")
    growth = round(rss_end - rss_warm, 1)
    minutes = range(math.ceil(last / 60))
    series = [[m, median_between(samples, 60 * m, 60 * m + 60, "rss"), median_between(samples, 60 * m, 60 * m + 60, "heap")]
              for m in minutes if any(60 * m <= x.t < 60 * m + 60 for x in samples)]
    return SoakReport(
        minutes=round(audio.duration_s / 60, 2), audio_s=audio.duration_s, groups=audio.groups,
        wall_s=round(wall, 2), x_realtime=round(audio.duration_s / wall, 2),
        utterances=utterances, errors=errors, segments_closed=final.segments_closed, no_speech=final.no_speech,
        accounting_ok=accounting_ok, rss_loaded_mb=rss_loaded, warmup_s=warmup_s,
        rss_warm_mb=rss_warm, rss_end_mb=rss_end, growth_mb=growth, rss_peak_mb=rss_mb("VmHWM"),
        heap_warm_mb=median_between(samples, *warm, "heap"), heap_end_mb=median_between(samples, *end, "heap"),
        slope_mb_per_h=round(slope_per_hour([(x.t, x.rss) for x in samples if x.t >= warmup_s]), 1),
        series=series, growth_limit_mb=GROWTH_LIMIT_MB, passed=accounting_ok and growth < GROWTH_LIMIT_MB,
        loadavg=loadavg, allocator=allocator(), setup=Setup.of(cfg))


def soak(minutes: float = 30.0, cfg: Config | None = None, checkpoint: Path | None = None,
         warmup_s: float = 120.0, cache_dir: Path = DEFAULT_CACHE) -> SoakReport:
    """Make (or reuse) `minutes` of audio and replay it; the report says whether the soak passed."""
    if warmup_s >= 60 * minutes:
        raise UserError(f"the warm-up ({warmup_s / 60:g} min) must be shorter than the audio ({minutes:g} min): "
                        "pass a shorter --warmup-minutes")
    audio = make_audio(minutes, cache_dir)
    return asyncio.run(replay(cfg or config.load(), audio, checkpoint, warmup_s))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="length of the generated audio (default 30)")
    p.add_argument("--warmup-minutes", type=float, default=2.0, help="RSS growth is measured from here (default 2)")
    p.add_argument("--out", type=Path, help="also write the JSON report here")
    p.add_argument("--checkpoint", type=Path, help="default: paths.checkpoint in config.toml")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the generated audio is kept")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    args = p.parse_args(argv)
    if argv is None:
        process.reexec_with_jemalloc()  # as the `fdrl` command runs (FDRL_MALLOC=system measures glibc's malloc)
    try:
        report = soak(args.minutes, config.load(overrides=args.set), args.checkpoint, 60 * args.warmup_minutes,
                      args.cache_dir)
    except UserError as e:
        print(f"soak: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(asdict(report), indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
