"""`fdrl eval`: score a checkpoint on a JSONL manifest through the same path as live use.

Audio lines without `text` are transcribed by the same Whisper pass the streaming pipeline uses,
so the figures measure the product, not an oracle transcript. Audio is normalized per manifest
`speaker` (all of that speaker's lines); a line without one is normalized by itself and the prior.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fdrl import checkpoint as ckpt_mod
from fdrl import metrics
from fdrl.config import Config
from fdrl.data import load_manifest
from fdrl.features import FeatureExtractor, Sample
from fdrl.labels import CANONICAL
from fdrl.progress import progress
from fdrl.train import predict_proba


def late_fusion(p_model: np.ndarray, samples: Sequence[Sample], labels: Sequence[str], face_weight: float) -> np.ndarray:
    """p = (1 - w) * p_fdrl + w * p_face for utterances where a face was seen (face posteriors are in CANONICAL order).

    A checkpoint trained on labels outside CANONICAL (a custom `labels.names`) has no face
    counterpart for them, so its probabilities pass through unfused.
    """
    p = p_model.copy()
    if not set(labels) <= set(CANONICAL):
        return p
    order = [CANONICAL.index(name) for name in labels]
    for i, s in enumerate(samples):
        if s.face_posterior is not None and face_weight > 0:
            face = s.face_posterior[order]
            p[i] = (1 - face_weight) * p[i] + face_weight * face / max(face.sum(), 1e-8)
    return p


def resolve_device(name: str, warn: Callable[[str], None] | None = None) -> str:
    """The torch device for `runtime.device`: "auto" takes CUDA when there is a GPU.

    "cuda" without a usable GPU is not fatal: everything runs on the CPU, only slower, so the
    caller is told through `warn` (default: a RuntimeWarning) and gets "cpu".
    """
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        message = f"runtime.device is {name!r} but CUDA is not available: running on the CPU (slower)"
        if warn is not None:
            warn(message)
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return "cpu"
    return name


def evaluate(manifest: Path, cfg: Config, checkpoint: Path | None = None, plot: Path | None = None) -> dict:
    """Validate everything first (checkpoint, every manifest line), then encode, predict and score."""
    device = resolve_device(cfg.runtime.device)
    extractor = FeatureExtractor(cfg, device)
    ckpt = ckpt_mod.load(checkpoint or cfg.resolve(cfg.paths.checkpoint), extractor.encoder_ids)
    items = load_manifest(manifest, ckpt.labels)
    with progress("encoding", len(items)) as advance:
        samples = extractor.extract(items, ckpt.labels, progress=advance)
    probs = late_fusion(predict_proba(ckpt.model, ckpt.prepare(samples)), samples, ckpt.labels, cfg.fusion.face_weight)
    y_true = np.array([s.label for s in samples])
    result = metrics.summary(y_true, probs.argmax(1), list(ckpt.labels))
    if plot is not None:
        plot_confusion(result, plot)
    return result


def plot_confusion(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(result["confusion"], dtype=np.float64)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    labels = result["labels"]
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2, 1.0 * len(labels) + 1.5))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"n={result['n']}  WAR {100 * result['war']:.1f}%  UAR {100 * result['uar']:.1f}%")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
