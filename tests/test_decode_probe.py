"""scripts/decode_probe.py's arithmetic: per-sentence word errors and the paired bootstrap, against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def probe():
    return load_script("decode_probe")


def test_counts_each_sentences_errors_after_normalizing(probe):
    said = ["The weekly meeting starts at ten.", "she left her keys"]
    heard = ["the weekly meeting starts at 10", "She left her, keys on the"]  # one substitution; two insertions
    assert probe.errors(said, heard).tolist() == [1, 2]
    assert probe.errors(["said something"], [""]).tolist() == [2]  # nothing heard: every word missed


def test_paired_difference_is_the_wer_change_with_an_interval_around_it(probe):
    words = np.array([10, 10, 10, 10])
    base, other = np.array([2, 1, 0, 3]), np.array([1, 1, 0, 1])  # 6 -> 3 errors of 40 words
    diff, lo, hi = probe.paired_difference(base, other, words)
    assert diff == pytest.approx(-3 / 40)
    assert -0.2 <= lo <= diff <= hi <= 0.0  # no resample makes it worse: no sentence got worse
    assert probe.paired_difference(base, base, words) == (0.0, 0.0, 0.0)
