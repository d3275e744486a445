"""Temperature scaling and expected calibration error against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fdrl.calibration import ece, fit_temperature, nll, softmax


def test_softmax_and_nll_by_hand():
    """softmax([0, ln 3]) = [1/4, 3/4]; at T = 2 the logits halve: softmax([0, ln 3 / 2]) = [1/(1+√3), √3/(1+√3)]."""
    logits = np.array([[0.0, math.log(3.0)]])
    np.testing.assert_allclose(softmax(logits), [[0.25, 0.75]])
    np.testing.assert_allclose(softmax(logits, 2.0), [[1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))]])
    assert nll(logits, np.array([1])) == pytest.approx(-math.log(0.75))
    assert nll(logits, np.array([0])) == pytest.approx(-math.log(0.25))


def test_fitted_temperature_matches_the_closed_form():
    """Every sample has logits [0, 4] and 3 of 4 are class 1: the NLL is least where σ(4/T) = 3/4,
    i.e. T = 4 / ln 3 ≈ 3.641 (an over-confident model is softened)."""
    logits = np.tile([0.0, 4.0], (4, 1))
    labels = np.array([1, 1, 1, 0])
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(4 / math.log(3.0), rel=1e-3)
    assert nll(logits, labels, t) < nll(logits, labels, 1.0)
    # All correct: sharper is always better, so the search ends near its lower end (the NLL is
    # flat at 0 in floating point below T ≈ 0.1).
    assert fit_temperature(logits, np.array([1, 1, 1, 1])) < 0.2
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, int)) == 1.0


def test_temperature_never_changes_the_label():
    logits = np.random.default_rng(0).normal(size=(50, 7)) * 3
    for t in (0.3, 1.0, 5.0):
        assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()


def test_ece_by_hand():
    """Two at confidence 0.9 (one right: accuracy 0.5) and two at 0.6 (both right: accuracy 1.0):
    ECE = 0.5 * |0.5 - 0.9| + 0.5 * |1.0 - 0.6| = 0.4."""
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    assert ece(probs, np.array([0, 1, 0, 0])) == pytest.approx(0.4)
    # Perfectly calibrated: 4 predictions at 0.75, 3 of them right.
    assert ece(np.tile([0.25, 0.75], (4, 1)), np.array([1, 1, 1, 0])) == pytest.approx(0.0)
    assert ece(np.zeros((0, 3)), np.zeros(0, int)) == 0.0


def test_a_label_below_the_threshold_is_shown_as_uncertain():
    from fdrl.calibration import UNCERTAIN, shown_label
    assert shown_label("anger", 0.62, 0.4) == "anger"
    assert shown_label("anger", 0.39, 0.4) == UNCERTAIN == "uncertain"
    assert shown_label("anger", 0.0, 0.0) == "anger"  # 0 = never uncertain
