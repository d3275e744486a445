"""`fdrl tune-text`: the split forward matches MiniLM, tuning learns, the file loads back (or fails clearly)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fdrl import config
from fdrl.errors import UserError
from fdrl.text import TextEncoder, run_layers
from fdrl.tune_text import TuneOptions, frozen_states, tune, tune_command

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


def test_tuning_learns_the_task_and_loads_back(encoder, goemotions, tmp_path):
    cfg = config.load()
    out = tmp_path / "tuned.safetensors"
    result = tune_command(cfg, goemotions, out, TuneOptions(layers=1, epochs=4, batch_size=8, lr=3e-4))
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
    weights = tune(encoder, tokens, 2, TuneOptions(layers=2, epochs=1, batch_size=6))
    assert {k.split(".")[1] for k in weights} == {"4", "5"}
    assert set(weights) <= set(encoder.net.state_dict())


@pytest.mark.parametrize("balanced", [False, True])
def test_class_weights_only_when_asked(encoder, monkeypatch, balanced):
    seen: list[torch.Tensor | None] = []
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr("fdrl.tune_text.F.cross_entropy",
                        lambda logits, y, weight=None: seen.append(weight) or real(logits, y, weight=weight))
    tokens = frozen_states(encoder, JOY + ANGER[:2], [1] * 6 + [0] * 2, n_frozen=5)  # 6 joy, 2 anger
    tune(encoder, tokens, 2, TuneOptions(layers=1, epochs=1, batch_size=8, balanced=balanced))
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
    with pytest.raises(UserError, match="--layers must be between 1 and 6"):
        tune_command(config.load(), tmp_path, tmp_path / "x.safetensors", TuneOptions(layers=7))
