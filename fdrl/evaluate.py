"""`fdrl eval`: score a checkpoint on a JSONL manifest through the same path as live use.

Audio lines without `text` are transcribed by the same Whisper pass the streaming pipeline uses,
so the figures measure the product, not an oracle transcript. Audio is normalized per manifest
`speaker` (all of that speaker's lines); a line without one is normalized by itself and the prior.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fdrl import checkpoint as ckpt_mod
from fdrl import metrics
from fdrl.config import Config
from fdrl.data import load_manifest
from fdrl.errors import UserError
from fdrl.features import FeatureExtractor
from fdrl.outputs import atomic_write, check_outputs, config_inputs
from fdrl.predict import posteriors, resolve_device
from fdrl.progress import progress
from fdrl.skips import SkipLog, extract_each


def evaluate(manifest: Path, cfg: Config, checkpoint: Path | None = None, plot: Path | None = None,
             skips: SkipLog | None = None) -> dict:
    """Validate everything first (checkpoint, every manifest line, the plot path), then encode, predict and score.

    A line that cannot be loaded or encoded goes to `skips` (default: a strict log, so the first
    one is a UserError); the result counts them (`skipped`, and `repeated` for dropped repeats).
    """
    skips = skips if skips is not None else SkipLog()
    device = resolve_device(cfg.runtime.device)
    extractor = FeatureExtractor(cfg, device)
    checkpoint = checkpoint or cfg.resolve(cfg.paths.checkpoint)
    ckpt = ckpt_mod.load(checkpoint, extractor.encoder_ids)
    items = load_manifest(manifest, ckpt.labels, skips, cfg.encoders.text_max_chars)
    check_outputs({"--plot": plot}, [manifest, *ckpt_mod.files(checkpoint), *config_inputs(cfg), *(f for it in items for f in it.files)])
    with progress("encoding", len(items)) as advance:
        items, samples = extract_each(extractor, items, ckpt.labels, skips, progress=advance)
    if not samples:
        raise UserError(f"{manifest}: no line could be encoded ({len(skips)} skipped, see the warnings above)")
    probs = posteriors(ckpt, ckpt.prepare(samples), cfg.late_fusion)
    y_true = np.array([s.label for s in samples])
    result = metrics.summary(y_true, probs.argmax(1), list(ckpt.labels)) | skips.summary()
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
    try:
        with atomic_write(path) as f:  # exactly `path` (savefig would add ".png" to a name without one)
            fig.savefig(f, format="png", dpi=120)
    finally:
        plt.close(fig)
