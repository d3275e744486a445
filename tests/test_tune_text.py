"""`fdrl tune-text`: the split forward matches MiniLM, tuning learns, the file loads back (or fails clearly)."""
from __future__ import annotations

import dataclasses

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdrl import config
from fdrl.config import TuneText
from fdrl.errors import UserError
from fdrl.text import TextEncoder, run_layers
from fdrl.tune_text import frozen_states, tune, tune_command

# Two classes told apart by their words only: joy (3) and anger (0), GoEmotions' Ekman ids.
JOY = ["what a lovely sunny day", "i love this so much", "best news ever thank you", "this made me so happy",
       "wonderful party with friends", "great job i am delighted"]
ANGER = ["this is infuriating and stupid", "i hate waiting in this line", "stop lying to me you idiot",
         "what a rude awful person", "i am furious about the delay", "get out of my way now"]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


@pytest.fixture(scope="module")
def goemotions(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("goemotions")
    (d / "labels.txt").write_text("anger\ndisgust\nfear\njoy\nneutral\nsadness\nsurprise\n")
    rows = [f"{t}\t3\tj{i}" for i, t in enumerate(JOY)] + [f"{t}\t0\ta{i}" for i, t in enumerate(ANGER)]
    (d / "train.tsv").write_text("\n".join(rows * 3) + "\n")
    (d / "dev.tsv").write_text("\n".join(rows) + "\n")
    return d


def test_frozen_bottom_then_top_layers_equal_the_whole_network(encoder):
    texts = ["hello there my friend", "no"]
    tokens = frozen_states(encoder, texts, [0, 1], n_frozen=4)
    x, mask = tokens.batch(np.arange(2))
    top = run_layers(encoder.net.layers[4:], x, mask)
    for row, (states, _) in enumerate(encoder.encode(texts)):
        # float16 storage of the intermediate states is the only difference
        np.testing.assert_allclose(top[row, : len(states)].detach().numpy(), states, atol=3e-2)


def options(**changes) -> TuneText:
    """config.toml's `[tune_text]` with `changes` (small and fast for tests)."""
    return dataclasses.replace(config.load().tune_text, **changes)


def test_tuning_learns_the_task_and_loads_back(encoder, goemotions, tmp_path):
    cfg = config.load()
    out = tmp_path / "tuned.safetensors"
    cfg.tune_text = options(layers=1, epochs=4, batch_size=8, lr=3e-4)
    result = tune_command(cfg, goemotions, out)
    assert [round(e["loss"], 3) for e in result["epochs"]][-1] < result["epochs"][0]["loss"]
    assert result["epochs"][-1]["dev_macro_f1"] == 1.0  # the dev rows are training rows here: it must fit them
    assert json.loads(__import__("safetensors").safe_open(out, "pt").metadata()["fdrl"])["n_train"] == 36

    tuned = TextEncoder(tuned=out)
    assert tuned.model_id != encoder.model_id and out.name in tuned.model_id
    # Only the top layer moved: the others are the pretrained weights.
    for i, (a, b) in enumerate(zip(encoder.net.layers, tuned.net.layers)):
        assert torch.equal(a.q.weight, b.q.weight) == (i < 5), i
    before, after = encoder.encode(["i love this"])[0][0], tuned.encode(["i love this"])[0][0]
    assert before.shape == after.shape and not np.allclose(before, after)


def test_tune_returns_weights_under_the_networks_names(encoder):
    tokens = frozen_states(encoder, JOY + ANGER, [1] * 6 + [0] * 6, n_frozen=4)
    weights = tune(encoder, tokens, 2, options(layers=2, epochs=1, batch_size=6))
    assert {k.split(".")[1] for k in weights} == {"4", "5"}
    assert set(weights) <= set(encoder.net.state_dict())


@pytest.mark.parametrize("balanced", [False, True])
def test_class_weights_only_when_asked(encoder, monkeypatch, balanced):
    seen: list[torch.Tensor | None] = []
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr("fdrl.tune_text.F.cross_entropy",
                        lambda logits, y, weight=None: seen.append(weight) or real(logits, y, weight=weight))
    tokens = frozen_states(encoder, JOY + ANGER[:2], [1] * 6 + [0] * 2, n_frozen=5)  # 6 joy, 2 anger
    tune(encoder, tokens, 2, options(layers=1, epochs=1, batch_size=8, balanced=balanced))
    if balanced:
        assert torch.allclose(seen[0], torch.tensor([8 / (2 * 2), 8 / (2 * 6)]))  # n / (C * count)
    else:
        assert seen == [None]


def test_bad_tuning_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="text tuning file not found: .*fdrl tune-text"):
        TextEncoder(tuned=tmp_path / "missing.safetensors")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x00" * 40)
    with pytest.raises(UserError, match="is damaged"):
        TextEncoder(tuned=damaged)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"layers.5.q.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(UserError, match=r"does not fit this MiniLM \(layers.5.q.weight\)"):
        TextEncoder(tuned=wrong)
    cfg = config.load()
    cfg.tune_text = options(layers=7)
    with pytest.raises(UserError, match="'tune_text.layers' must be between 1 and 6, got 7"):
        tune_command(cfg, tmp_path, tmp_path / "x.safetensors")


# --- DailyDialog and neutral thinning (issue 13) ---------------------------------------------------

from fdrl.tune_text import Tokens, balanced_weights, epoch_counts, epoch_rows  # noqa: E402


def pool(labels: list[int], thinned: list[bool]) -> Tokens:
    return Tokens([np.zeros((3, 384), np.float16)] * len(labels), np.array(labels), None, np.array(thinned))


def test_epoch_draws_every_kept_row_and_a_fraction_of_the_thinned() -> None:
    # 10 rows: 6 neutral turns of the dialogue corpus (thinned), 2 neutral and 2 joy from the other corpus.
    tokens = pool([0] * 6 + [0, 0, 1, 1], [True] * 6 + [False] * 4)
    rng = np.random.default_rng(0)
    for _ in range(5):
        rows = epoch_rows(tokens, 0.5, rng)
        assert len(rows) == 4 + 3 and set(range(6, 10)) <= set(rows.tolist())  # round(0.5 * 6) = 3 thinned rows
    assert len(epoch_rows(tokens, 1.0, rng)) == 10 and len(epoch_rows(tokens, 0.0, rng)) == 4


def test_class_balanced_weights_of_an_epoch_by_hand() -> None:
    tokens = pool([0] * 6 + [0, 0, 1, 1], [True] * 6 + [False] * 4)
    # Expected epoch at keep 0.5: neutral 2 + 0.5 * 6 = 5, joy 2, anger 0 -> n = 7, C = 3.
    np.testing.assert_allclose(epoch_counts(tokens, 0.5, 3), [5.0, 2.0, 0.0])
    # n / (C * n_c): 7 / 15, 7 / 6, and 0 for a class never seen.
    np.testing.assert_allclose(balanced_weights(epoch_counts(tokens, 0.5, 3)).numpy(), [7 / 15, 7 / 6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(epoch_counts(tokens, 1.0, 3), [8.0, 2.0, 0.0])


@pytest.fixture(scope="module")
def dailydialog(tmp_path_factory) -> Path:
    """A generated DailyDialog copy: joy (4) and anger (1) turns among neutral ones (0), plus one
    dialogue with more turns than labels (skipped whole, as in the official train split)."""
    root = tmp_path_factory.mktemp("dailydialog")
    dialogues = [(["Hello there .", JOY[i], "Good to hear ."], [0, 4, 0]) for i in range(6)]
    dialogues += [(["Hi .", ANGER[i], "Calm down ."], [0, 1, 0]) for i in range(6)]
    for split, rows in (("train", dialogues + [(["one", "two"], [0])]), ("validation", dialogues[::2])):
        (root / split).mkdir()
        (root / split / f"dialogues_{split}.txt").write_text("".join(" __eou__ ".join(t) + " __eou__\n" for t, _ in rows))
        (root / split / f"dialogues_emotion_{split}.txt").write_text("".join(" ".join(map(str, c)) + "\n" for _, c in rows))
    return root


def test_tuning_with_dailydialog_and_context(goemotions, dailydialog, tmp_path):
    from fdrl.skips import SkipLog
    cfg = config.load(overrides=["encoders.text_context_turns=2"])
    cfg.tune_text = options(layers=1, epochs=2, batch_size=8, lr=3e-4, dialogue_neutral=0.5)
    skips = SkipLog(strict=False)
    result = tune_command(cfg, goemotions, tmp_path / "tuned.safetensors", skips, dailydialog=dailydialog)
    assert result["n_dialogue"] == 36 and result["n_dialogue_dev"] == 18 and result["context_turns"] == 2
    assert result["skipped"] == 1  # the dialogue with 2 turns and 1 label
    last = result["epochs"][-1]
    assert {"dev_macro_f1", "dialogue_dev_macro_f1", "dialogue_dev_macro_f1_emotions", "dialogue_dev_war"} <= set(last)
    assert TextEncoder(tuned=tmp_path / "tuned.safetensors").encode(["fine"])[0][0].shape == (3, 384)
