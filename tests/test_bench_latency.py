"""bench.latency's scoring: which sentence a final label belongs to, splits, misses, latency from the
true end of speech and the word error rate, on hand-made events (no models)."""
from __future__ import annotations

import pytest

from bench.latency import normalize, score, word_error_rate
from stream.events import Utterance


def final(start: float, end: float, text: str, end_to_label: float, **timings: float) -> Utterance:
    return Utterance(stream="0", index=0, start=start, end=end, text=text, label="neutral", scores={"neutral": 1.0},
                     final=True, modalities=("audio", "text"), timings={"end_to_label": end_to_label, "compute": 0.1, **timings})


SPANS = [[0.5, 2.0], [3.5, 5.0], [6.5, 8.0]]
SENTENCES = ["the cat sat", "on the mat", "all day long"]


def test_each_label_goes_to_the_sentence_it_overlaps_most():
    finals = [final(0.2, 2.1, "The cat sat.", 0.6, early=0.4),
              final(3.2, 4.0, "on the", 0.7), final(4.3, 5.1, "mat", 0.5),   # a sentence split in two
              final(9.0, 9.5, "uh", 0.6)]                                    # noise after the last sentence
    s = score(finals, SPANS, SENTENCES)
    assert (s.sentences, s.one_label, s.extra, s.missed, s.early_used) == (3, 1, 2, 1, 1)
    # True end → label: the segment's end plus its latency, minus the sentence's last voiced second.
    assert s.true_end_to_label.n == 2
    assert s.true_end_to_label.p50_ms == pytest.approx(1000 * ((2.1 + 0.6 - 2.0) + (5.1 + 0.5 - 5.0)) / 2)
    assert s.end_to_label.n == 4 and s.compute.n == 4


def test_word_error_rate_joins_the_words_and_ignores_case_and_punctuation():
    assert normalize("The cat, sat!  OK?") == "the cat sat ok"
    assert word_error_rate(SENTENCES, ["The cat sat.", "On the mat", "all day long"]) == 0.0
    assert word_error_rate(SENTENCES, ["the cat sat on", "the mat all day"]) == pytest.approx(1 / 9, abs=1e-4)
    assert word_error_rate(SENTENCES, []) == 1.0


def test_the_peer_benchmark_scores_a_final_by_when_it_came_out():
    from bench.latency import SpokenFile
    from bench.peer import score_emissions

    spoken = SpokenFile("plain", "x.wav", 9.0, SPANS, SENTENCES)
    # 2.9 s: sentence 0 ended at 2.0; 3.9 s: nothing new ended since (extra); 5.8 s: sentence 1; the third never.
    s = score_emissions("peer", spoken, 0, [(2.9, "the cat sat"), (3.9, "uh"), (5.8, "on the mat")])
    assert (s.finals, s.extra, s.missed) == (3, 1, 1)
    assert s.latency.n == 2 and s.latency.p50_ms == pytest.approx(850.0)
    assert s.wer == word_error_rate(SENTENCES, ["the cat sat", "uh", "on the mat"])
    assert s.transcripts == ["the cat sat", "uh", "on the mat"]  # kept in the report, to read the errors
    # Before any sentence ended, a final is extra too.
    assert score_emissions("peer", spoken, 0, [(0.4, "hm")]).extra == 1
