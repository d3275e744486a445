"""Calibrated confidence: temperature scaling and expected calibration error, as pure functions.

Why: the FDRL head's softmax is over-confident on voices unlike its training voices (the demo's
voice-only labels came with confidences up to 1.00 while 1 in 10 was right). A single
temperature T, fitted by minimizing the negative log-likelihood of held-out predictions
(Guo et al., "On Calibration of Modern Neural Networks", ICML 2017), divides the logits before the
softmax: the ranking of the classes, hence every label, is unchanged, only how sure the scores
say the model is. T is fitted on held-out folds only (predictions of models that never saw those
clips), never on the data the model was trained on, where it is always confident.

Expected calibration error (ECE) is the usual summary: predictions are binned by their top
probability, and ECE is the bin-size-weighted mean gap between each bin's accuracy and its mean
confidence (equal-width bins, 15 by default, as in Guo et al.).
"""
from __future__ import annotations

import numpy as np

T_MIN, T_MAX = 0.05, 20.0   # the search range of the temperature (logits divided by T)
ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature` [N, C], computed stably."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true `labels` [N] under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = T_MIN, hi: float = T_MAX,
                    tol: float = 1e-4) -> float:
    """The temperature in [lo, hi] that minimizes `nll` on held-out (`logits`, `labels`).

    NLL is convex in 1/T (a log-sum-exp of linear functions of 1/T, minus a linear term), hence
    unimodal in log T: a golden-section search over log T finds the minimum without gradients or
    a learning rate. No predictions: 1.0 (nothing to learn from).
    """
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 1.0
    a, b = np.log(lo), np.log(hi)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, labels, np.exp(c)), nll(logits, labels, np.exp(d))
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2.0))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of `probs` [N, C] against `labels` [N], with `bins` equal-width
    confidence bins over (0, 1]: sum over bins of |accuracy - mean confidence| x (bin share)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    # Bin k holds confidences in (k/bins, (k+1)/bins]; a confidence of exactly 0 cannot occur with C >= 1.
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for k in range(bins):
        member = which == k
        if member.any():
            total += member.mean() * abs(correct[member].mean() - confidence[member].mean())
    return float(total)


UNCERTAIN = "uncertain"   # the label shown when the calibrated top score is below `labels.uncertain_below`


def shown_label(best: str, confidence: float, uncertain_below: float) -> str:
    """What events and the UI call an utterance: its best label, or `UNCERTAIN` when the calibrated
    confidence of that label is below the threshold (the best guess stays in the event)."""
    return UNCERTAIN if confidence < uncertain_below else best
