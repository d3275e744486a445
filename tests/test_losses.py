"""Each loss against values worked out by hand on tiny tensors, plus float64 gradchecks."""
import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from fdrl import losses as L


def t(*rows, dtype=torch.float64):
    """t(1, 2) -> [2]; t([1, 2], [3, 4]) -> [2, 2]; t([[...]]) -> that nested list as is."""
    return torch.tensor(rows[0] if len(rows) == 1 else rows, dtype=dtype)


# ---- masked helpers -----------------------------------------------------------------------------

def test_masked_softmax_zeroes_padding_and_empty_rows():
    scores = t([1.0, 2.0, 100.0], [5.0, 5.0, 5.0])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    w = L.masked_softmax(scores, mask)
    e = math.e
    assert torch.allclose(w[0], t(1 / (1 + e), e / (1 + e), 0.0))
    assert torch.equal(w[1], torch.zeros(3, dtype=torch.float64))


def test_masked_mean():
    x = t([[1.0, 2.0], [3.0, 4.0], [float("nan"), 9.0]])[None]   # NaN in padding must not leak
    mask = torch.tensor([[True, True, False]])
    assert torch.equal(L.masked_mean(x, mask), t([[2.0, 3.0]]))
    assert torch.equal(L.masked_mean(x, torch.zeros(1, 3, dtype=torch.bool)), t([[0.0, 0.0]]))


def test_span_mean_matches_slices():
    x = torch.arange(2 * 5 * 3, dtype=torch.float64).view(2, 5, 3)
    rows, start, end = torch.tensor([0, 1, 1]), torch.tensor([0, 2, 4]), torch.tensor([2, 5, 5])
    got = L.span_mean(x, rows, start, end)
    want = torch.stack([x[0, 0:2].mean(0), x[1, 2:5].mean(0), x[1, 4:5].mean(0)])
    assert torch.allclose(got, want)


# ---- task ---------------------------------------------------------------------------------------

def test_task_loss_ignores_unknown_labels():
    logits = t([0.0, 0.0], [2.0, 0.0], [0.0, 50.0])
    y = torch.tensor([0, 0, -1])
    want = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert L.task_loss(logits, y).item() == pytest.approx(want)
    assert L.task_loss(logits, torch.full((3,), -1)).item() == 0.0


def test_balanced_class_weights_by_hand():
    # counts [3, 1, 0] of 4 known labels: 4 / (3 * 3), 4 / (3 * 1), and 0 for the absent class
    w = L.class_weights(np.array([0, 0, 0, 1, -1]), 3)
    assert torch.allclose(w, torch.tensor([4 / 9, 4 / 3, 0.0]))


def test_class_weights_count_each_sample_as_much_as_it_is_drawn():
    # weighted counts [0.5 + 0.5 + 0.5, 1, 0] = [1.5, 1, 0], total 2.5: 2.5 / (3 * 1.5), 2.5 / (3 * 1), 0
    w = L.class_weights(np.array([0, 0, 0, 1, -1]), 3, sample_weight=np.array([0.5, 0.5, 0.5, 1.0, 9.0]))
    assert torch.allclose(w, torch.tensor([2.5 / 4.5, 2.5 / 3, 0.0]))


def test_task_loss_class_weights():
    logits, y = t([0.0, 0.0], [2.0, 0.0]), torch.tensor([0, 1])
    w = t(1.0, 3.0)
    want = (1 * math.log(2) + 3 * (2 + math.log(1 + math.exp(-2)))) / 4
    assert L.task_loss(logits, y, w).item() == pytest.approx(want)


# ---- alignment ----------------------------------------------------------------------------------

def test_word_alignment_hand_value():
    # unit vectors, temperature 1: logits = identity, each row CE = log(1 + e^-1), both directions alike
    a = t([2.0, 0.0], [0.0, 3.0])
    txt = t([1.0, 0.0], [0.0, 1.0])
    assert L.word_alignment_loss(a, txt, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    # asymmetric case: audio 2 sits between both texts, so the two directions differ
    a2 = t([1.0, 0.0], [1.0, 1.0])
    c = 1 / math.sqrt(2)
    row = lambda pos, neg: -pos + math.log(math.exp(pos) + math.exp(neg))  # noqa: E731
    a2t = (row(1, 0) + row(c, c)) / 2      # audio i over texts
    t2a = (row(1, c) + row(c, 0)) / 2      # text j over audios
    assert L.word_alignment_loss(a2, txt, 1.0).item() == pytest.approx((a2t + t2a) / 2)


def test_word_alignment_temperature_and_degenerate():
    a = t([1.0, 0.0], [0.0, 1.0])
    assert L.word_alignment_loss(a, a, 0.1).item() == pytest.approx(math.log(1 + math.exp(-10)))
    assert L.word_alignment_loss(a[:1], a[:1], 0.1).item() == 0.0
    assert L.word_alignment_loss(a[:0], a[:0], 0.1).item() == 0.0


def test_soft_alignment_hand_value():
    audio = t([[1.0, 0.0], [0.0, 1.0], [7.0, -7.0]])[None]         # third frame is padding
    audio_mask = torch.tensor([[True, True, False]])
    text = t([[1.0, 0.0]])[None]
    text_mask = torch.tensor([[True]])
    w1 = 1 / (1 + math.exp(-1 / math.sqrt(2)))                      # softmax of scores [1, 0] / sqrt(2)
    summary = (w1, 1 - w1)
    want = 1 - summary[0] / math.hypot(*summary)
    assert L.soft_alignment_loss(text, text_mask, audio, audio_mask).item() == pytest.approx(want)
    # the padded frame's content is irrelevant
    audio2 = audio.clone()
    audio2[0, 2] = t(-100.0, 3.0)
    assert L.soft_alignment_loss(text, text_mask, audio2, audio_mask).item() == pytest.approx(want)


def test_soft_alignment_only_counts_samples_with_both():
    audio = t([[1.0, 0.0]], [[0.0, 0.0]])                           # sample 1 has no audio
    audio_mask = torch.tensor([[True], [False]])
    text = t([[1.0, 0.0]], [[0.0, 1.0]])
    text_mask = torch.tensor([[True], [True]])
    assert L.soft_alignment_loss(text, text_mask, audio, audio_mask).item() == pytest.approx(0.0, abs=1e-12)
    assert L.soft_alignment_loss(text, text_mask, audio, torch.zeros(2, 1, dtype=torch.bool)).item() == 0.0


# ---- disparity ----------------------------------------------------------------------------------

def test_disparity_hand_value():
    shared = t([[1.0, 0.0], [1.0, 1.0], [3.0, 3.0]])[None]
    private = t([[0.0, 1.0], [1.0, 0.0], [3.0, 3.0]])[None]         # frame 3 (parallel) is padding
    mask = torch.tensor([[True, True, False]])
    assert L.disparity_loss(shared, private, mask).item() == pytest.approx((0.0 + 0.5) / 2)
    assert L.disparity_loss(shared, private, torch.ones(1, 3, dtype=torch.bool)).item() == pytest.approx(1.5 / 3)
    # pooled form: [B, d] with a [B] mask; cos^2 is sign-blind (anti-parallel is as bad as parallel)
    assert L.disparity_loss(t([1.0, 0.0], [1.0, 0.0]), t([-2.0, 0.0], [0.0, 1.0]), torch.tensor([True, True])).item() == pytest.approx(0.5)
    assert L.disparity_loss(shared, private, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


# ---- predictor ----------------------------------------------------------------------------------

def test_predictor_loss_hand_value():
    y = torch.tensor([0, 1, -1])
    streams = {
        "shared_audio": t([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [9.0, 9.0, 9.0]),
        "private_text": t([9.0, 0.0, 0.0], [0.0, 0.0, 0.0], [9.0, 9.0, 9.0]),
    }
    present = {"shared_audio": torch.tensor([True, True, True]), "private_text": torch.tensor([False, True, True])}
    # counted: audio s0 (log 3), audio s1 (log 3), text s1 (log 3); text s0 absent; s2 unknown label
    assert L.predictor_loss(streams, y, present).item() == pytest.approx(math.log(3))
    present["private_text"] = torch.tensor([True, False, False])
    want = (2 * math.log(3) + (-9 + math.log(math.exp(9) + 2))) / 3
    assert L.predictor_loss(streams, y, present).item() == pytest.approx(want)
    none = {k: torch.zeros(3, dtype=torch.bool) for k in streams}
    assert L.predictor_loss(streams, y, none).item() == 0.0
    assert L.predictor_loss({}, y, {}).item() == 0.0


# ---- gradients ----------------------------------------------------------------------------------

def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def test_gradchecks():
    torch.manual_seed(0)
    a, b = _rand(4, 3), _rand(4, 3)
    assert gradcheck(lambda a, b: L.word_alignment_loss(a, b, 0.5), (a, b))
    s, p = _rand(2, 5, 3), _rand(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert gradcheck(lambda s, p: L.disparity_loss(s, p, mask), (s, p))
    q, k = _rand(2, 4, 3), _rand(2, 5, 3)
    qm = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert gradcheck(lambda q, k: L.soft_alignment_loss(q, qm, k, mask), (q, k))
    z, y = _rand(3, 4), torch.tensor([1, -1, 3])
    assert gradcheck(lambda z: L.task_loss(z, y), (z,))
    assert gradcheck(lambda z: L.predictor_loss({"shared_audio": z}, y, {"shared_audio": torch.tensor([True, True, False])}), (z,))
    x = _rand(2, 5, 3)
    assert gradcheck(lambda x: L.span_mean(x, torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([4, 2])), (x,))
    assert gradcheck(lambda x: L.masked_mean(x, mask), (x,))
