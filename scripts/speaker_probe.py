"""How much speaker normalization gives, and how much of a speaker it needs: a linear probe.

Pools each RAVDESS clip's Whisper frames (mean and standard deviation per dimension), fits a
class-balanced logistic regression on the training speakers of the same 5 speaker-independent folds
as `fdrl train --cv`, and prints the mean UAR over folds for: raw frames; frames standardized by
each speaker's statistics from all their clips; and from only k random clips of the speaker (plus
the clip itself), pooled with the population prior as in the live pipeline; then the prosody
frames (fdrl/prosody.py) alone and appended to Whisper's, normalized by all of the speaker's
clips. The figures in models/README.md and fdrl/prosody.py come from it. Needs the feature cache
(`fdrl train` fills it); about two minutes:

    .venv/bin/python scripts/speaker_probe.py ../shared/data/ravdess
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from fdrl import config, data, metrics
from fdrl.features import FeatureExtractor
from fdrl.inputs import Sample
from fdrl.prosody import PROSODY_DIM
from fdrl.speaker import Moments, SpeakerNorm


def pooled(frames: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.concatenate([f.mean(0), f.std(0)]) for f in frames])


def probe_uar(x: np.ndarray, y: np.ndarray, folds: list[tuple[list[int], list[int]]], n_classes: int) -> float:
    """Mean UAR over folds of an L2-regularized, class-balanced logistic regression (L-BFGS)."""
    uars = []
    for train, val in folds:
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
        xt, xv = (torch.tensor((x[i] - mu) / sd, dtype=torch.float32) for i in (train, val))
        yt = torch.tensor(y[train])
        weight = torch.tensor(len(train) / (n_classes * np.bincount(y[train], minlength=n_classes)), dtype=torch.float32)
        linear = torch.nn.Linear(x.shape[1], n_classes)
        opt = torch.optim.LBFGS(linear.parameters(), max_iter=300)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(linear(xt), yt, weight=weight) + 1e-3 * linear.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        uars.append(metrics.uar(y[val], linear(xv).argmax(1).numpy()))
    return 100 * float(np.mean(uars))


def normalized(samples: list[Sample], norm: SpeakerNorm, k: int | None, rng: np.random.Generator,
               neutral_half: bool = False) -> list[np.ndarray]:
    """Each clip standardized by k random clips of its speaker plus itself (None: all of them)."""
    speakers = np.array([s.speaker for s in samples])
    labels = np.array([s.label for s in samples])
    out = []
    for i, s in enumerate(samples):
        same = np.flatnonzero(speakers == s.speaker)
        if k is None:
            chosen = same
        elif neutral_half:  # a history dominated by neutral speech
            neutral, other = same[labels[same] == 0], same[labels[same] != 0]
            chosen = np.concatenate([rng.choice(neutral, min(len(neutral), k // 2), replace=False),
                                     rng.choice(other, k - min(len(neutral), k // 2), replace=False)])
        else:
            chosen = rng.choice(same, min(k, len(same)), replace=False)
        heard = Moments.of(np.concatenate([samples[j].audio for j in np.union1d(chosen, [i])]))
        out.append(norm.standardize(s.audio, heard))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ravdess", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cfg = config.load(overrides=["encoders.prosody=false"])  # Whisper's frames alone; prosody rows at the end
    labels = list(cfg.labels.names)
    items = data.load_ravdess(args.ravdess)
    samples = FeatureExtractor(cfg).extract(items, labels)
    with_prosody = FeatureExtractor(config.load(overrides=["encoders.prosody=true"])).extract(items, labels)
    for s in samples + with_prosody:
        s.audio = s.audio.astype(np.float32)
    y = np.array([s.label for s in samples])
    folds = data.speaker_folds(items, cfg.train.folds, cfg.train.seed)
    population = SpeakerNorm.fit(samples, cfg.model.speaker_prior_frames)
    no_prior = SpeakerNorm(population.prior, 0)
    rows: list[tuple[str, list[np.ndarray]]] = [("raw frames", [s.audio for s in samples])]
    rows.append(("all of the speaker's clips, no prior", normalized(samples, no_prior, None, np.random.default_rng(args.seed))))
    rows.append(("all of the speaker's clips + prior", normalized(samples, population, None, np.random.default_rng(args.seed))))
    for k in (1, 3, 10, 20):
        rows.append((f"{k} random clips + prior", normalized(samples, population, k, np.random.default_rng(args.seed))))
    rows.append(("20 random clips, no prior", normalized(samples, no_prior, 20, np.random.default_rng(args.seed))))
    rows.append(("20 clips half neutral, no prior", normalized(samples, no_prior, 20, np.random.default_rng(args.seed), True)))
    both = normalized(with_prosody, SpeakerNorm.fit(with_prosody, 0), None, np.random.default_rng(args.seed))
    rows.append(("prosody alone, all clips, no prior", [f[:, -PROSODY_DIM:] for f in both]))
    rows.append(("Whisper + prosody, all clips, no prior", both))
    for name, frames in rows:
        print(f"{name:40s} UAR {probe_uar(pooled(frames), y, folds, len(labels)):.1f}%", flush=True)


if __name__ == "__main__":
    main()
