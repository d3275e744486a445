"""Metrics against a hand-worked example, and against scikit-learn on random labels."""
import json

import numpy as np
import pytest

from fdrl import metrics
from fdrl.errors import UserError

# 3 classes in y_true (0, 1, 2); class 3 exists in the label set and is predicted once but never true.
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 3, 1, 0, 2, 2, 2, 1])
# confusion rows (true) x cols (pred):
#   0: [2, 1, 0, 1]   1: [1, 1, 0, 0]   2: [0, 1, 3, 0]   3: [0, 0, 0, 0]
CM = [[2, 1, 0, 1], [1, 1, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]]


def test_confusion_hand():
    assert metrics.confusion(Y_TRUE, Y_PRED, 4).tolist() == CM


def test_war_uar_hand():
    assert metrics.war(Y_TRUE, Y_PRED) == pytest.approx(6 / 10)
    # recalls 2/4, 1/2, 3/4 over the classes present in y_true (class 3 is not averaged in)
    assert metrics.uar(Y_TRUE, Y_PRED) == pytest.approx((0.5 + 0.5 + 0.75) / 3)


def test_per_class_and_macro_f1_hand():
    pc = metrics.per_class(Y_TRUE, Y_PRED, 4)
    # class 0: tp 2, predicted 3, support 4 -> p 2/3, r 1/2, f1 2*2/(4+1+2) = 4/7
    assert pc[0] == pytest.approx({"precision": 2 / 3, "recall": 0.5, "f1": 4 / 7, "support": 4})
    # class 1: tp 1, predicted 3, support 2 -> p 1/3, r 1/2, f1 2/(2+2+1) = 2/5
    assert pc[1] == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4, "support": 2})
    # class 2: tp 3, predicted 3, support 4 -> p 1, r 3/4, f1 6/7
    assert pc[2] == pytest.approx({"precision": 1.0, "recall": 0.75, "f1": 6 / 7, "support": 4})
    # class 3: never true, predicted once -> everything 0 (no division by zero)
    assert pc[3] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics.macro_f1(Y_TRUE, Y_PRED) == pytest.approx((4 / 7 + 0.4 + 6 / 7) / 3)


def test_perfect_and_all_wrong():
    y = np.array([0, 1, 2, 1])
    assert metrics.war(y, y) == metrics.uar(y, y) == metrics.macro_f1(y, y) == 1.0
    assert metrics.war(y, (y + 1) % 3) == metrics.uar(y, (y + 1) % 3) == metrics.macro_f1(y, (y + 1) % 3) == 0.0


def test_agrees_with_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(30):
        n_classes = int(rng.integers(2, 8))
        n = int(rng.integers(1, 60))
        y_true = rng.integers(0, n_classes, n)
        y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, n_classes, n))
        present = np.unique(y_true)
        assert metrics.war(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred))
        assert metrics.uar(y_true, y_pred) == pytest.approx(sk.recall_score(y_true, y_pred, average="macro", labels=present, zero_division=0))
        assert metrics.macro_f1(y_true, y_pred) == pytest.approx(sk.f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0))
        assert np.array_equal(metrics.confusion(y_true, y_pred, n_classes), sk.confusion_matrix(y_true, y_pred, labels=range(n_classes)))
        p, r, f, s = sk.precision_recall_fscore_support(y_true, y_pred, labels=range(n_classes), zero_division=0)
        pc = metrics.per_class(y_true, y_pred, n_classes)
        for c in range(n_classes):
            assert pc[c] == pytest.approx({"precision": p[c], "recall": r[c], "f1": f[c], "support": s[c]})


def test_summary_is_json_ready():
    labels = ["neutral", "happiness", "sadness", "anger"]
    s = metrics.summary(Y_TRUE, Y_PRED, labels)
    assert set(s) == {"n", "war", "uar", "macro_f1", "per_class", "confusion", "labels"}
    assert s["n"] == 10 and s["labels"] == labels and s["confusion"] == CM
    assert list(s["per_class"]) == labels and s["per_class"]["sadness"]["support"] == 4
    assert s["uar"] == pytest.approx(metrics.uar(Y_TRUE, Y_PRED))
    assert json.loads(json.dumps(s)) == s  # plain Python types only


def test_bad_input():
    with pytest.raises(UserError, match="nothing to score"):
        metrics.summary(np.array([], dtype=int), np.array([], dtype=int), ["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        metrics.summary(np.array([0, 2]), np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="y_pred has"):
        metrics.war(np.array([0, 1]), np.array([0]))
