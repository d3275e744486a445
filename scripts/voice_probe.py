"""Voiced seconds (fdrl.asr_gate.voiced_seconds) of real speech against generated non-speech, to set
`asr.gate_min_voiced_s`: a segment without words keeps its voice label only above it.

    .venv/bin/python scripts/voice_probe.py ../shared/data --per-corpus 50
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from fdrl import config
from fdrl.asr_gate import voiced_seconds
from fdrl.data import load_emovo, load_ravdess, load_tess
from fdrl.features import FeatureExtractor

SR = 16000


def noises(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Non-speech a VAD may open a segment on, 1.5 s each: hiss, rumble, a door knock, a click train, a fan."""
    t = np.arange(int(1.5 * SR)) / SR
    white = rng.standard_normal(len(t))
    pink = np.cumsum(white) * 0.02
    pink -= np.convolve(pink, np.ones(400) / 400, mode="same")
    knock = np.zeros(len(t))
    for start in (0.2, 0.5, 0.8):
        k = int(start * SR)
        knock[k:k + 800] = rng.standard_normal(800) * np.exp(-np.arange(800) / 120)
    clicks = np.zeros(len(t))
    clicks[:: SR // 7] = 1.0
    fan = np.convolve(white, np.ones(30) / 30, mode="same")
    return {name: (0.3 * x / np.abs(x).max()).astype(np.float32)
            for name, x in {"white": white, "pink": pink, "knock": knock, "clicks": clicks, "fan": fan}.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--per-corpus", type=int, default=50)
    args = ap.parse_args()
    rng = random.Random(0)
    extractor = FeatureExtractor(config.load(), "cpu", cache=False)
    for name, items in {"ravdess": load_ravdess(args.data / "ravdess"), "tess": load_tess(args.data / "tess"),
                        "emovo": load_emovo(args.data / "emovo")}.items():
        v = [voiced_seconds(extractor.speech(it)) for it in rng.sample(items, args.per_corpus)]
        print(f"{name:8s} voiced s: min {min(v):.2f}  5% {np.percentile(v, 5):.2f}  median {np.median(v):.2f}")
    for name, x in noises(np.random.default_rng(0)).items():
        print(f"{name:8s} voiced s: {voiced_seconds(x):.2f}")


if __name__ == "__main__":
    main()
