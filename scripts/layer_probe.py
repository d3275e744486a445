"""Which Whisper encoder layer carries emotion across corpora: a leave-one-corpus-out linear probe.

Each clip of RAVDESS, TESS and EMOVO is cropped by the training VAD (`FeatureExtractor.speech`),
encoded by the torch port of Whisper's encoder (fdrl/whisper_encoder.py) two ways: inside the
30-s window Whisper always sees (padded, as CTranslate2 encodes it) and on the speech alone
(unpadded); every layer's frames are pooled (mean and standard deviation per dimension) and
standardized by the clip's speaker (all their clips). A class-balanced logistic regression trained
on two corpora is scored (UAR) on the third. Pooled features are kept in `--cache`, so a second run
only fits. About 17 minutes on one core for `--tess 700` (TESS subsampled, seeded):

    .venv/bin/python scripts/layer_probe.py ../shared/data --tess 700 --cache runs/layers.npz
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from fdrl import config, data
from fdrl.features import FeatureExtractor
from fdrl.skips import SkipLog
from fdrl.whisper import SAMPLES_PER_FRAME
from fdrl.whisper_encoder import WhisperEncoder

from speaker_probe import pooled, probe_uar  # scripts/ is on sys.path when run as a script


def pooled_layers(extractor: FeatureExtractor, encoder: WhisperEncoder, items: list[data.Item]) -> dict[str, np.ndarray]:
    """{"padded": [N, L, 2D], "unpadded": [N, L, 2D]} pooled states of every layer per item."""
    out: dict[str, list[np.ndarray]] = {"padded": [], "unpadded": []}
    whisper = extractor.whisper
    for i, item in enumerate(items):
        audio = extractor.speech(item)
        padded = whisper.windows(audio)[0]
        n = max(1, audio.size // SAMPLES_PER_FRAME)
        with torch.no_grad():
            for mode, window in (("padded", padded), ("unpadded", padded[:, :2 * n])):
                states = encoder(torch.from_numpy(np.ascontiguousarray(window))[None])
                out[mode].append(pooled([s[0, :n].numpy() for s in states]))
        if i % 200 == 0:
            logging.info("encoded %d / %d", i, len(items))
    return {k: np.stack(v) for k, v in out.items()}


def by_speaker(x: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """Each row standardized by the mean and standard deviation of its speaker's rows."""
    out = np.empty_like(x)
    for s in np.unique(speakers):
        rows = speakers == s
        out[rows] = (x[rows] - x[rows].mean(0)) / (x[rows].std(0) + 1e-6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--tess", type=int, default=0, help="use this many random TESS clips (0: all)")
    ap.add_argument("--cache", type=Path, required=True, help=".npz of the pooled layers (made on the first run)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # a probe beside a training run
    cfg = config.load()
    labels = list(cfg.labels.names)
    if not args.cache.exists():
        skips = SkipLog(strict=False)
        tess = data.load_tess(args.data / "tess", skips)
        if args.tess:
            tess = [tess[i] for i in sorted(np.random.default_rng(args.seed).choice(len(tess), args.tess, replace=False))]
        items = data.load_ravdess(args.data / "ravdess", skips) + tess + data.load_emovo(args.data / "emovo", skips)
        extractor = FeatureExtractor(cfg, "cpu")
        encoder = WhisperEncoder.from_ct2(extractor.whisper.path)
        layers = pooled_layers(extractor, encoder, items)
        np.savez(args.cache, **layers, label=np.array([labels.index(it.label) for it in items]),
                 speaker=np.array([f"{it.corpus}:{it.speaker}" for it in items]),
                 corpus=np.array([it.corpus for it in items]))
    z = np.load(args.cache)
    y, speakers, corpus = z["label"], z["speaker"], z["corpus"]
    names = sorted(set(corpus))
    folds = [(np.flatnonzero(corpus != c).tolist(), np.flatnonzero(corpus == c).tolist()) for c in names]
    print("held out:", " ".join(names))
    for mode in ("padded", "unpadded"):
        for layer in range(z[mode].shape[1]):
            x = by_speaker(z[mode][:, layer], speakers)
            uars = [probe_uar(x, y, [fold], len(labels)) for fold in folds]
            print(f"{mode:9s} layer {layer + 1}: " + " ".join(f"{u:5.1f}" for u in uars) + f"  mean {np.mean(uars):.1f}", flush=True)


if __name__ == "__main__":
    main()
