"""The words reader: words heard without a voice are read by a linear layer beside FDRL (fdrl.predict)."""
from __future__ import annotations

import numpy as np
import pytest

from fdrl import checkpoint, config
from fdrl.inputs import Sample
from fdrl.predict import WordsReader, posteriors, predict_proba, read_words
from fdrl.train import fit_words_reader

D = 4  # token state width in these hand-made samples


def text(label: int, state: np.ndarray, corpus: str = "goemotions") -> Sample:
    return Sample(label, "", text=np.stack([state, state]).astype(np.float32), corpus=corpus)


def test_words_alone_are_mixed_with_the_reader_and_a_voice_or_face_keeps_fdrls_posterior():
    reader = WordsReader(np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], np.float32), np.zeros(2, np.float32))
    words = Sample(0, "", text=np.array([[2.0, 0, 0, 0], [0, 0, 0, 0]], np.float32))   # mean state (1, 0, 0, 0)
    spoken = Sample(0, "", audio=np.zeros((3, 5), np.float32), text=words.text)
    seen = Sample(0, "", vision=np.zeros((2, 3), np.float32), text=words.text)
    p_fdrl = np.array([[0.2, 0.8]] * 3, np.float32)
    p = read_words(p_fdrl, [words, spoken, seen], reader, 0.9)
    p_reader = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
    assert p[0] == pytest.approx(0.1 * p_fdrl[0] + 0.9 * p_reader, abs=1e-6)
    assert np.array_equal(p[1:], p_fdrl[1:])
    # Weight 0, or a checkpoint without a reader: FDRL alone.
    assert np.array_equal(read_words(p_fdrl[:1], [words], reader, 0.0), p_fdrl[:1])
    assert np.array_equal(read_words(p_fdrl[:1], [words], None, 0.9), p_fdrl[:1])


def test_the_reader_is_logistic_regression_on_the_mean_token_state():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    states = rng.normal(size=(60, D))
    labels = (states[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int) * 2  # labels 0 and 2 of three: 1 never occurs
    samples = [text(int(y), x) for x, y in zip(states, labels)]
    reader = fit_words_reader(samples, 3, neutral=None, dialogue_neutral=0.25)
    assert reader.weight.shape == (3, D) and reader.bias.shape == (3,)
    p = reader.proba(samples)
    want = LogisticRegression(max_iter=1000).fit(states, labels).predict_proba(states)
    assert p[:, [0, 2]] == pytest.approx(want, abs=1e-4)   # two classes: scikit-learn's sigmoid, as a softmax
    assert p[:, 1].max() < 1e-9                            # a label no text had is never read from words


def test_dailydialog_neutral_turns_count_as_much_as_training_draws_them():
    # One and the same sentence state: 80 DailyDialog neutral turns, 20 GoEmotions happiness rows.
    state = np.ones(D)
    samples = [text(0, state, "dailydialog") for _ in range(80)] + [text(1, state) for _ in range(20)]
    as_they_come = fit_words_reader(samples, 2, neutral=0, dialogue_neutral=1.0).proba(samples[:1])[0]
    thinned = fit_words_reader(samples, 2, neutral=0, dialogue_neutral=0.1).proba(samples[:1])[0]
    assert as_they_come[0] == pytest.approx(0.8, abs=0.01)
    assert thinned[0] == pytest.approx(8 / 28, abs=0.01)   # 80 x 0.1 against 20


def test_no_reader_without_text_of_two_labels():
    assert fit_words_reader([text(1, np.ones(D))] * 3, 3, neutral=0, dialogue_neutral=0.25) is None


def test_a_trained_checkpoint_carries_its_reader_and_an_older_one_still_loads(tiny_checkpoint, tmp_path):
    cfg = config.load()
    ckpt = checkpoint.load(tiny_checkpoint)
    reader = ckpt.words_reader
    assert reader is not None and reader.weight.shape == (len(ckpt.labels), ckpt.dims["text"])
    line = Sample(-1, "", text=np.random.default_rng(0).normal(size=(6, ckpt.dims["text"])).astype(np.float32))
    fdrl_alone = predict_proba(ckpt.model, [line], temperature=ckpt.temperature)
    assert posteriors(ckpt, [line], cfg.late_fusion) == pytest.approx(
        read_words(fdrl_alone, [line], reader, cfg.late_fusion.words_weight), abs=1e-6)
    # Saved again with and without the reader: the first keeps it exactly, the second labels with FDRL alone.
    with_reader, without = tmp_path / "with.safetensors", tmp_path / "without.safetensors"
    for path, r in ((with_reader, reader), (without, None)):
        checkpoint.save(path, ckpt.model, ckpt.labels, ckpt.dims, ckpt.encoders, ckpt.model_config, ckpt.metrics,
                        ckpt.speaker_norm, ckpt.temperature, r)
    again = checkpoint.load(with_reader).words_reader
    assert np.array_equal(again.weight, reader.weight) and np.array_equal(again.bias, reader.bias)
    older = checkpoint.load(without)
    assert older.words_reader is None
    assert posteriors(older, [line], cfg.late_fusion) == pytest.approx(fdrl_alone, abs=1e-6)
