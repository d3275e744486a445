"""`fdrl train`: cross-validation over several seeds, the ablation table, and its input errors."""
from __future__ import annotations

import json

import pytest

from fdrl import config
from fdrl.errors import UserError
from fdrl.train import VARIANTS, Corpora, train_command


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    cache = tmp_path_factory.mktemp("train-cache")
    return config.load(overrides=[f"paths.cache_dir='{cache}'", "train.epochs=1", "train.batch_size=8", "train.folds=2"])


def test_cv_runs_every_seed_and_reports_mean_and_spread(cfg, mini_corpus, tmp_path):
    report = tmp_path / "report.json"
    result = train_command(cfg, Corpora(manifests=[mini_corpus / "manifest.jsonl"]), tmp_path / "m.pt",
                           cv=True, seeds=2, report=report)
    cv = result["cross_validation"]
    assert cv["folds"] == 2 and cv["seeds"] == [0, 1] and list(cv["table"]) == ["FDRL"]
    mean, std = cv["table"]["FDRL"]["uar"]
    assert 0.0 <= mean <= 1.0 and std >= 0.0
    assert json.loads(report.read_text())["cross_validation"] == json.loads(json.dumps(cv))
    assert (tmp_path / "m.pt").is_file()


def test_ablation_tables_every_variant(cfg, mini_corpus, tmp_path):
    result = train_command(cfg, Corpora(manifests=[mini_corpus / "manifest.jsonl"]), tmp_path / "m.pt",
                           ablation=True, seeds=1)
    assert list(result["cross_validation"]["table"]) == list(VARIANTS)


@pytest.mark.parametrize("kwargs, message", [
    ({"cv": True, "seeds": 0}, "--seeds 0: give a count of at least 1"),
    ({"seeds": 2}, "together with --cv or --ablation"),
])
def test_bad_seed_counts_are_refused_before_any_work(cfg, mini_corpus, tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        train_command(cfg, Corpora(manifests=[mini_corpus / "manifest.jsonl"]), tmp_path / "m.pt", **kwargs)
    assert not (tmp_path / "m.pt").exists()


def test_nothing_to_train_on_and_unknown_labels(cfg, tmp_path):
    with pytest.raises(UserError, match="nothing to train on: pass --ravdess"):
        train_command(cfg, Corpora(), tmp_path / "m.pt")
    manifest = tmp_path / "odd.jsonl"
    manifest.write_text('{"text": "hm", "label": "boredom"}\n')
    with pytest.raises(UserError, match="boredom"):
        train_command(cfg, Corpora(manifests=[manifest]), tmp_path / "m.pt")
