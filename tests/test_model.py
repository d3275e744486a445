"""FDRL and the concat baseline: collate, shapes for every modality subset, masking, losses, learning."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fdrl import config
from fdrl import losses as L
from fdrl.errors import UserError
from fdrl.model import DEFAULT_DIMS, FDRL, MODALITIES, Batch, collate

DIMS = {"audio": 12, "text": 10, "vision": 7}
C = 4


def model_cfg(**kw) -> config.Model:
    base = dict(d_model=16, n_heads=2, shared_layers=1, private_layers=1, dropout=0.0, alignment="word", fusion="fdrl",
                speaker_norm=True, speaker_prior_frames=500.0)
    return config.Model(**{**base, **kw})


LOSS = config.Loss(alpha=0.1, beta=0.1, gamma=0.5, temperature=0.1)


def sample(rng, label=0, audio=0, text=0, vision=0, dims=DIMS, words=True):
    """A fake encoded utterance with the given sequence lengths (0 = modality absent)."""
    feats = {m: rng.standard_normal((n, dims[m])).astype(np.float32) if n else None
             for m, n in (("audio", audio), ("text", text), ("vision", vision))}
    spans = None
    if words and audio and text:
        spans = np.array([[0, audio // 2, 0, max(1, text // 2)], [audio // 2, audio, max(1, text // 2), text]], np.int32)
    return SimpleNamespace(label=label, word_spans=spans, **feats)


SUBSETS = {
    "audio": [dict(audio=9), dict(audio=5)],
    "text": [dict(text=6), dict(text=3)],
    "vision": [dict(vision=4), dict(vision=2)],
    "audio+text": [dict(audio=9, text=6), dict(audio=5, text=3)],
    "all": [dict(audio=9, text=6, vision=4), dict(audio=5, text=3, vision=2)],
    "mixed": [dict(audio=9, text=6, vision=4), dict(text=5), dict(audio=7), dict(vision=3, audio=4), dict()],
}


def batch_of(specs, seed=0, dims=DIMS) -> Batch:
    rng = np.random.default_rng(seed)
    return collate([sample(rng, label=i % C, dims=dims, **s) for i, s in enumerate(specs)], dims)


def fresh(seed=0, **kw) -> FDRL:
    torch.manual_seed(seed)
    return FDRL(model_cfg(**kw), DIMS, C).eval()


# ---- collate ------------------------------------------------------------------------------------

def test_collate_pads_masks_and_keeps_shapes_uniform():
    rng = np.random.default_rng(0)
    s0 = sample(rng, label=2, audio=4, text=3)
    s0.audio = s0.audio.astype(np.float16)
    s0.word_spans = np.array([[0, 2, 0, 1], [2, 9, 1, 3], [4, 6, 1, 2], [1, 1, 0, 1]], np.int32)  # 2nd clipped, 3rd/4th empty
    s1 = sample(rng, label=-1, text=5)
    s1.word_spans = np.array([[0, 1, 0, 1]], np.int32)                                          # no audio: dropped
    b = collate([s0, s1], DIMS)
    assert b.x["audio"].shape == (2, 4, 12) and b.x["audio"].dtype == torch.float32
    assert b.x["text"].shape == (2, 5, 10)
    assert b.x["vision"].shape == (2, 1, 7) and not b.mask["vision"].any()                    # absent in the whole batch
    assert b.mask["audio"].tolist() == [[True] * 4, [False] * 4]
    assert b.mask["text"].tolist() == [[True, True, True, False, False], [True] * 5]
    assert torch.equal(b.x["audio"][0], torch.from_numpy(s0.audio.astype(np.float32)))
    assert (b.x["text"][0, 3:] == 0).all()
    assert b.words.tolist() == [[0, 0, 2, 0, 1], [0, 2, 4, 1, 3]] and b.words.dtype == torch.int64
    assert b.y.tolist() == [2, -1]


def test_collate_ignores_modalities_outside_dims_and_checks_feature_size():
    rng = np.random.default_rng(0)
    b = collate([sample(rng, audio=3, text=2, vision=2)], {"audio": 12, "text": 10})
    assert set(b.x) == {"audio", "text"} and len(b.words) == 2
    with pytest.raises(UserError, match="text features have shape"):
        collate([sample(rng, text=2)], {"text": 11})
    empty = collate([sample(rng, audio=2, words=False)], DIMS)
    assert empty.words.shape == (0, 5)


# ---- shapes and masking -------------------------------------------------------------------------

@pytest.mark.parametrize("fusion", ["fdrl", "concat"])
@pytest.mark.parametrize("subset", list(SUBSETS))
def test_every_modality_subset(subset, fusion):
    model = fresh(fusion=fusion)
    b = batch_of(SUBSETS[subset])
    out = model(b)
    B = len(SUBSETS[subset])
    assert out.logits.shape == (B, C) and torch.isfinite(out.logits).all()
    total, parts = model.loss(b, out, LOSS)
    assert torch.isfinite(total) and set(parts) == {"task", "alignment", "disparity", "predictor"}
    if fusion == "concat":
        assert out.shared == out.private == out.stream_logits == {}
        return
    assert set(out.shared) == set(out.private) == set(MODALITIES)
    assert set(out.stream_logits) == {f"{s}_{m}" for s in ("shared", "private") for m in MODALITIES}
    for m in MODALITIES:
        T = b.x[m].shape[1]
        assert out.shared[m].shape == out.private[m].shape == (B, T, 16)
        absent = ~b.mask[m].any(1)
        for s in ("shared", "private"):
            z = out.stream_logits[f"{s}_{m}"]
            assert z.shape == (B, C) and (z[absent] == 0).all()
        assert (out.shared[m][~b.mask[m]] == 0).all()                                           # zeros at padding


@pytest.mark.parametrize("fusion", ["fdrl", "concat"])
def test_padding_values_do_not_change_anything(fusion):
    model = fresh(fusion=fusion)
    b = batch_of(SUBSETS["mixed"])
    noisy = Batch({m: x.clone() for m, x in b.x.items()}, b.mask, b.words, b.y)
    for m, x in noisy.x.items():
        x[~b.mask[m]] = 1e3 * torch.randn(int((~b.mask[m]).sum()), x.shape[-1])               # incl. absent modalities
    out, out2 = model(b), model(noisy)
    assert torch.allclose(out.logits, out2.logits, atol=1e-6)
    for k in out.stream_logits:
        assert torch.allclose(out.stream_logits[k], out2.stream_logits[k], atol=1e-6)
    for m in out.shared:
        assert torch.allclose(out.shared[m], out2.shared[m], atol=1e-6)
        assert torch.allclose(out.private[m], out2.private[m], atol=1e-6)
    assert model.loss(b, out, LOSS)[1] == pytest.approx(model.loss(noisy, out2, LOSS)[1], abs=1e-5)


def test_sample_output_does_not_depend_on_batchmates():
    """Attention never crosses padding: a sample alone and inside a longer batch predict the same."""
    model = fresh()
    rng = np.random.default_rng(3)
    samples = [sample(rng, audio=3, text=2, vision=1), sample(rng, audio=11, text=8, vision=6), sample(rng, text=4)]
    together = model(collate(samples, DIMS)).logits
    for i, s in enumerate(samples):
        alone = model(collate([s], DIMS)).logits[0]
        assert torch.allclose(together[i], alone, atol=1e-5)


def test_bucketed_lengths_change_no_output():
    """Padding to a bucket (`predict_logits`' shapes) adds masked frames only."""
    model = fresh()
    rng = np.random.default_rng(4)
    samples = [sample(rng, audio=3, text=2, vision=1), sample(rng, audio=11, text=8, vision=6)]
    plain, padded = collate(samples, DIMS), collate(samples, DIMS, length=lambda n: -(-n // 8) * 8)
    assert [padded.x[m].shape[1] for m in ("audio", "text", "vision")] == [16, 8, 8]
    assert all(padded.mask[m].sum() == plain.mask[m].sum() for m in plain.mask)
    assert torch.allclose(model(plain).logits, model(padded).logits, atol=1e-5)


@pytest.mark.parametrize("n, size, expected", [(0, 128, []), (13, 128, [8, 4, 1]), (16, 16, [16]),
                                               (300, 128, [128, 128, 32, 8, 4]), (1, 128, [1])])
def test_batches_come_in_a_few_sizes(n, size, expected):
    from fdrl.predict import bucket_sizes
    assert bucket_sizes(n, size) == expected and sum(expected) == n


def test_lengths_come_in_multiples_of_32_or_under_bf16_powers_of_two():
    from fdrl.predict import padded_length
    assert [padded_length(n) for n in (1, 32, 33, 100, 750)] == [32, 32, 64, 128, 768]
    assert [padded_length(n, bf16=True) for n in (1, 32, 33, 100, 750)] == [32, 32, 64, 128, 1024]


def test_bf16_warm_up_runs_each_bucket_once(monkeypatch):
    import fdrl.predict as P
    shapes = []
    monkeypatch.setattr(P, "predict_logits", lambda model, samples, batch_size, bf16: shapes.append(
        (len(samples), samples[0].audio.shape[0], samples[0].text.shape[0])))
    P.warm_bf16(fresh(), 4, {"audio": 100, "text": 40})
    assert sorted(shapes) == sorted((b, a, t) for b in (1, 2, 4) for a in (32, 64, 128) for t in (32, 64))


def test_bf16_predictions_keep_their_order_and_values():
    from fdrl.predict import predict_logits
    model = fresh()
    rng = np.random.default_rng(5)
    samples = [sample(rng, audio=int(rng.integers(1, 40)), text=int(rng.integers(1, 9))) for _ in range(11)]
    fp32, bf16 = predict_logits(model, samples, batch_size=4), predict_logits(model, samples, batch_size=4, bf16=True)
    assert bf16.shape == fp32.shape and np.abs(bf16 - fp32).max() < 0.05 * np.abs(fp32).max()
    nearest = np.abs(bf16[:, None] - fp32[None]).sum(-1).argmin(1)   # each row next to its own fp32 row
    assert (nearest == np.arange(len(samples))).all()


def test_self_attention_matches_torch_sdpa():
    """The written-out attention is standard multi-head attention with a key padding mask."""
    from fdrl.model import SelfAttention
    torch.manual_seed(0)
    attn = SelfAttention(8, 2, 0.0)
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    q, k, v = attn.qkv(x).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    want = attn.proj(want.transpose(1, 2).reshape(2, 5, 8))
    assert torch.allclose(attn(x, mask), want, atol=1e-6)


def test_model_without_vision_is_not_built_for_it():
    dims = {"audio": 12, "text": 10}
    model = FDRL(model_cfg(), dims, C).eval()
    assert model.modalities == ("audio", "text")
    assert not any("vision" in name for name, _ in model.named_parameters())
    rng = np.random.default_rng(0)
    b = collate([sample(rng, audio=4, text=3, vision=5)], dims)                                 # vision ignored
    out = model(b)
    assert set(out.shared) == {"audio", "text"} and out.logits.shape == (1, C)


def test_bad_model_config_is_a_user_error():
    with pytest.raises(UserError, match="multiple of model.n_heads"):
        FDRL(model_cfg(d_model=10, n_heads=4), DIMS, C)
    with pytest.raises(UserError, match="unknown modality"):
        FDRL(model_cfg(), {"smell": 3}, C)
    with pytest.raises(UserError, match="at least 2 classes"):
        FDRL(model_cfg(), DIMS, 1)


def test_defaults_from_config_toml():
    cfg = config.load()
    model = FDRL(cfg.model, DEFAULT_DIMS, len(cfg.labels.names)).eval()
    rng = np.random.default_rng(0)
    b = collate([sample(rng, audio=20, text=7, dims=DEFAULT_DIMS), sample(rng, vision=3, dims=DEFAULT_DIMS)], DEFAULT_DIMS)
    with torch.inference_mode():
        assert model(b).logits.shape == (2, len(cfg.labels.names))


# ---- losses through the model -------------------------------------------------------------------

@pytest.mark.parametrize("alignment", ["word", "soft", "none"])
def test_total_loss_reaches_every_parameter(alignment):
    model = fresh(alignment=alignment)
    b = batch_of(SUBSETS["all"] + SUBSETS["mixed"])
    total, parts = model.loss(b, model(b), LOSS)
    total.backward()
    assert all(v > 0 for v in parts.values()) or (alignment == "none" and parts["alignment"] == 0)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for block_owner in (model.shared, *model.private.values()):                              # shared AND private encoders
        assert block_owner.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_loss_parts_are_the_documented_combination():
    model = fresh()
    b = batch_of(SUBSETS["audio+text"] + [dict(text=4)])
    out = model(b)
    total, parts = model.loss(b, out, LOSS)
    assert parts["task"] == pytest.approx(L.task_loss(out.logits, b.y).item())
    # word alignment: InfoNCE over span means of the shared sequences
    i, a0, a1, t0, t1 = b.words.T.tolist()
    audio = torch.stack([out.shared["audio"][r, s:e].mean(0) for r, s, e in zip(i, a0, a1)])
    text = torch.stack([out.shared["text"][r, s:e].mean(0) for r, s, e in zip(i, t0, t1)])
    assert parts["alignment"] == pytest.approx(L.word_alignment_loss(audio, text, LOSS.temperature).item(), rel=1e-5)
    # disparity: frame-level per modality (mean), plus pooled private audio vs text on samples with both
    m = b.mask
    frame = (L.disparity_loss(out.shared["audio"], out.private["audio"], m["audio"])
             + L.disparity_loss(out.shared["text"], out.private["text"], m["text"])) / 2
    pooled = L.disparity_loss(L.masked_mean(out.private["audio"], m["audio"]), L.masked_mean(out.private["text"], m["text"]),
                              m["audio"].any(1) & m["text"].any(1))
    assert parts["disparity"] == pytest.approx((frame + pooled).item(), rel=1e-5)
    # predictor: 2 streams x 2 samples with audio, 2 streams x 3 samples with text, vision absent
    streams = {k: v for k, v in out.stream_logits.items() if "vision" not in k}
    present = {k: m[k.split("_")[1]].any(1) for k in streams}
    assert parts["predictor"] == pytest.approx(L.predictor_loss(streams, b.y, present).item(), rel=1e-5)
    want = parts["task"] + 0.1 * parts["alignment"] + 0.1 * parts["disparity"] + 0.5 * parts["predictor"]
    assert total.item() == pytest.approx(want, rel=1e-5)


def test_concat_baseline_trains_on_the_task_only():
    model = fresh(fusion="concat")
    b = batch_of(SUBSETS["mixed"])
    out = model(b)
    total, parts = model.loss(b, out, LOSS)
    assert parts == {"task": pytest.approx(total.item()), "alignment": 0.0, "disparity": 0.0, "predictor": 0.0}
    assert not hasattr(model, "shared")


def test_unknown_labels_and_class_weights():
    model = fresh()
    b = batch_of(SUBSETS["audio+text"])
    b.y[:] = -1
    total, parts = model.loss(b, model(b), LOSS)
    assert parts["task"] == parts["predictor"] == 0.0 and torch.isfinite(total)
    b = batch_of(SUBSETS["audio+text"])   # labels 0 and 1: zero weight on class 1 leaves sample 0 only
    out = model(b)
    _, parts = model.loss(b, out, LOSS, class_weights=torch.tensor([1.0, 0.0, 1.0, 1.0]))
    assert parts["task"] == pytest.approx(L.task_loss(out.logits[:1], b.y[:1]).item(), rel=1e-6)


def test_dropout_training_mode_stays_finite_with_absent_modalities():
    torch.manual_seed(0)
    model = FDRL(model_cfg(dropout=0.5), DIMS, C).train()
    b = batch_of(SUBSETS["mixed"])
    total, _ = model.loss(b, model(b), LOSS)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---- it learns ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fusion", ["fdrl", "concat"])
def test_overfits_a_tiny_separable_set(fusion):
    """12 samples, 4 classes; each class's frames are noise around a class centre, mixed subsets."""
    rng = np.random.default_rng(0)
    centres = {m: rng.standard_normal((C, d)).astype(np.float32) for m, d in DIMS.items()}
    specs = [dict(audio=8, text=5), dict(text=6), dict(audio=5, vision=3)]
    samples = []
    for i in range(12):
        s = sample(rng, label=i % C, **specs[i % 3])
        for m in DIMS:
            x = getattr(s, m)
            if x is not None:
                setattr(s, m, centres[m][s.label] + 0.5 * x)
        samples.append(s)
    b = collate(samples, DIMS)
    torch.manual_seed(0)
    model = FDRL(model_cfg(fusion=fusion, d_model=32, n_heads=4), DIMS, C)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        model.train()
        loss, _ = model.loss(b, model(b), LOSS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            if (model(b).logits.argmax(1) == b.y).all():
                break
    assert (model(b).logits.argmax(1) == b.y).all(), f"not fitted after {step + 1} steps"


def test_default_face_dim_matches_the_face_analyzer():
    pytest.importorskip("cv2")
    face = pytest.importorskip("fdrl.face")
    assert DEFAULT_DIMS["vision"] == face.FACE_DIM
