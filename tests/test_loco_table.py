"""scripts/loco_table.py: loco.py outputs scored per held-out corpus and grouped by recipe, on a generated file."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def table():
    return load_script("loco_table")


def logits_for(pred: list[int], n_classes: int = 3) -> np.ndarray:
    return np.eye(n_classes)[pred]


def write_run(path, voice_pred: list[int]) -> None:
    """Two folds: fold 0 holds out corpus a (4 clips), fold 1 holds out b (2 clips); labels 0, 1, 2."""
    y = np.array([0, 0, 1, 2, 1, 2])
    corpus = np.array(["a", "a", "a", "a", "b", "b"])
    speaker = logits_for([0, 1, 1, 2, 1, 0])  # a: 3 of 4 right (class 0: 1/2, 1: 1, 2: 1), b: 1 of 2 right
    np.savez(path, y=y, corpus=corpus,
             val_0=np.arange(4), speaker_0=speaker[:4], no_speaker_0=logits_for([0] * 4), audio_0=logits_for(voice_pred[:4]),
             val_1=np.arange(4, 6), speaker_1=speaker[4:], no_speaker_1=logits_for([1, 2]), audio_1=logits_for(voice_pred[4:]))


def test_scores_each_held_out_corpus_against_hand_computed_values(table, tmp_path):
    write_run(tmp_path / "r-s0.npz", [0, 0, 1, 2, 1, 2])
    scores = table.per_corpus(tmp_path / "r-s0.npz")
    assert scores["a"]["UAR"] == pytest.approx((0.5 + 1 + 1) / 3, abs=1e-4)
    assert scores["a"]["WAR"] == pytest.approx(0.75)
    assert scores["a"]["UAR w/o speaker"] == pytest.approx(1 / 3, abs=1e-4)  # all class 0: recall 1, 0, 0
    assert scores["b"]["UAR"] == pytest.approx(0.5) and scores["b"]["UAR w/o speaker"] == pytest.approx(1.0)
    assert scores["a"]["UAR voice alone"] == scores["b"]["UAR voice alone"] == 1.0


def test_groups_runs_by_recipe_with_mean_and_spread_over_seeds(table, tmp_path, monkeypatch, capsys):
    write_run(tmp_path / "full-s0.npz", [0, 0, 1, 2, 1, 2])
    write_run(tmp_path / "full-s1.npz", [1, 1, 1, 1, 1, 1])
    write_run(tmp_path / "other-s0.npz", [0, 0, 1, 2, 1, 2])
    out = tmp_path / "scores.json"
    monkeypatch.setattr(sys, "argv", ["loco_table", *(str(tmp_path / f) for f in ("full-s0.npz", "full-s1.npz", "other-s0.npz")),
                                      "--json", str(out)])
    table.main()
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"full", "other"}
    assert "| full | 2 |" in rows["full"] and "| other | 1 |" in rows["other"]
    # Voice alone: seed 0 right everywhere (1.0), seed 1 says 1 (a: 1/3, b: 1/2) -> mean 0.708, std 0.412 over the seeds.
    assert "70.8 ± 41.2 %" in rows["full"]
    saved = json.loads(out.read_text())
    assert set(saved) == {"full", "other"} and set(saved["full"]) == {"0", "1"} and set(saved["full"]["0"]) == {"a", "b"}



def run_main(table, monkeypatch, capsys, *argv: str) -> str:
    """main() with these arguments, which must stop with argparse's usage error; its last stderr line."""
    monkeypatch.setattr(sys, "argv", ["loco_table", *argv])
    with pytest.raises(SystemExit) as stop:
        table.main()
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_refuses_a_json_path_that_is_one_of_its_runs(table, tmp_path, monkeypatch, capsys):
    run = tmp_path / "r-s0.npz"
    write_run(run, [0, 0, 1, 2, 1, 2])
    before = run.read_bytes()
    assert "would overwrite it" in run_main(table, monkeypatch, capsys, str(run), "--json", str(run))
    assert run.read_bytes() == before


def test_names_a_missing_run(table, tmp_path, monkeypatch, capsys):
    write_run(tmp_path / "r-s0.npz", [0, 0, 1, 2, 1, 2])
    err = run_main(table, monkeypatch, capsys, str(tmp_path / "r-s0.npz"), str(tmp_path / "r-s1.npz"), "--json", str(tmp_path / "out.json"))
    assert "run not found" in err and "r-s1.npz" in err
    assert not (tmp_path / "out.json").exists()
