"""Emotion-recognition metrics on integer label arrays: WAR, UAR, macro-F1, confusion, per class.

WAR (weighted average recall) is plain accuracy; UAR (unweighted average recall) is the mean
recall over classes, the usual headline number for imbalanced emotion corpora.

Which classes count: UAR and macro-F1 average over the classes PRESENT IN y_true. A corpus that
lacks a class of the label set (IEMOCAP has no fear) is then not punished for it, while a wrong
prediction of such a class still costs: it is a miss of the sample's true class. The arithmetic is
scikit-learn's (`recall_score` / `f1_score` with `average="macro", labels=present`); this module
fixes the conventions and the JSON shape.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import sklearn.metrics as sk

from fdrl.errors import UserError


def _labels(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(y_pred, dtype=np.int64).ravel()
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("no labels to score")
    hi = n_classes if n_classes is not None else np.inf
    if min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= hi:
        raise ValueError(f"labels must be in [0, {n_classes}), got {min(y_true.min(), y_pred.min())}..{max(y_true.max(), y_pred.max())}")
    return y_true, y_pred


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """[n_classes, n_classes] counts: row = true class, column = predicted class."""
    y_true, y_pred = _labels(y_true, y_pred, n_classes)
    return sk.confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))


def war(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Weighted average recall = accuracy."""
    return float(sk.accuracy_score(*_labels(y_true, y_pred)))


def per_class(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[int, dict[str, float]]:
    """Precision, recall, F1 and support of every class; a ratio with a zero denominator is 0."""
    y_true, y_pred = _labels(y_true, y_pred, n_classes)
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(n_classes), zero_division=0)
    return {c: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]), "support": int(support[c])}
            for c in range(n_classes)}


def uar(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted average recall: mean recall over the classes present in y_true."""
    y_true, y_pred = _labels(y_true, y_pred)
    return float(sk.recall_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean F1 over the classes present in y_true (false positives on other classes still lower precision)."""
    y_true, y_pred = _labels(y_true, y_pred)
    return float(sk.f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))


def summary(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Every metric in JSON-ready Python types; `labels` name the classes in matrix order."""
    if len(y_true) == 0:
        raise UserError("nothing to score: no samples with a known label (check the manifest's labels)")
    n = len(labels)
    stats = per_class(y_true, y_pred, n)
    return {
        "n": int(len(y_true)),
        "war": war(y_true, y_pred),
        "uar": uar(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
        "per_class": {labels[c]: s for c, s in stats.items()},
        "confusion": confusion(y_true, y_pred, n).tolist(),
        "labels": list(labels),
    }
