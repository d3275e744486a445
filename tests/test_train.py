"""`fdrl train`: cross-validation over several seeds, the ablation table, and its input errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fdrl import config
from fdrl.errors import UserError
from fdrl.train import VARIANTS, Corpora, train_command, variant_config


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    cache = tmp_path_factory.mktemp("train-cache")
    return config.load(overrides=[f"paths.cache_dir='{cache}'", "train.epochs=1", "train.batch_size=8", "train.folds=2"])


def test_cv_runs_every_seed_and_reports_mean_and_spread(cfg, mini_corpus, tmp_path):
    report = tmp_path / "report.json"
    result = train_command(cfg, Corpora(manifests=[mini_corpus / "manifest.jsonl"]), tmp_path / "m.safetensors",
                           cv="speaker", seeds=2, report=report)
    cv = result["cross_validation"]
    assert cv["folds"] == 2 and cv["seeds"] == [0, 1] and list(cv["table"]) == ["FDRL"]
    mean, std = cv["table"]["FDRL"]["uar"]
    assert 0.0 <= mean <= 1.0 and std >= 0.0
    assert json.loads(report.read_text())["cross_validation"] == json.loads(json.dumps(cv))
    assert (tmp_path / "m.safetensors").is_file()
    # Calibration: the temperature fitted on the held-out folds is reported and shipped in the checkpoint;
    # ECE before and after, and UAR with each clip normalized by itself, are in the table.
    from fdrl import checkpoint
    assert 0.05 <= cv["temperature"] <= 20 and checkpoint.load(tmp_path / "m.safetensors").temperature == pytest.approx(cv["temperature"])
    assert {"ece", "ece_calibrated", "uar_no_speaker"} <= set(cv["table"]["FDRL"])


def test_leave_one_corpus_out_holds_out_each_corpus(cfg, mini_corpus, tmp_path):
    """The mini corpus's two voices, named as two corpora: one fold each, the other corpus trains it."""
    lines = [json.loads(line) for line in (mini_corpus / "manifest.jsonl").read_text().splitlines()]
    for line in lines:
        if "audio" in line:
            line["audio"], line["corpus"] = str(mini_corpus / line["audio"]), line["speaker"]
    manifest = tmp_path / "two-corpora.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = train_command(cfg, Corpora(manifests=[manifest]), tmp_path / "m.safetensors", cv="corpus")
    assert result["cross_validation"]["kind"] == "corpus" and result["cross_validation"]["folds"] == 2


def test_ablation_tables_every_variant(cfg, mini_corpus, tmp_path):
    result = train_command(cfg, Corpora(manifests=[mini_corpus / "manifest.jsonl"]), tmp_path / "m.safetensors",
                           ablation=True, seeds=1)
    assert list(result["cross_validation"]["table"]) == list(VARIANTS)


@pytest.mark.parametrize("kwargs, message", [
    ({"cv": "speaker", "seeds": 0}, "--seeds 0: give a count of at least 1"),
    ({"seeds": 2}, "together with --cv or --ablation"),
    ({"cv": "actor"}, "--cv actor: use one of speaker, corpus"),
])
def test_bad_seed_counts_are_refused_before_any_work(cfg, mini_corpus, tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        train_command(cfg, Corpora(manifests=[mini_corpus / "manifest.jsonl"]), tmp_path / "m.safetensors", **kwargs)
    assert not (tmp_path / "m.safetensors").exists()


def test_nothing_to_train_on_and_unknown_labels(cfg, tmp_path):
    with pytest.raises(UserError, match="nothing to train on: pass --ravdess"):
        train_command(cfg, Corpora(), tmp_path / "m.safetensors")
    manifest = tmp_path / "odd.jsonl"
    manifest.write_text('{"text": "hm", "label": "boredom"}\n')
    with pytest.raises(UserError, match="boredom"):
        train_command(cfg, Corpora(manifests=[manifest]), tmp_path / "m.safetensors")


def test_balanced_epochs_give_every_corpus_the_same_share():
    """Corpora of 10 and 30 clips: 20 draws each per epoch (the mean, so the epoch keeps its length),
    the large one without repeats; unbalanced, every clip once. Text-only rows are drawn apart."""
    import numpy as np

    from fdrl.inputs import Sample
    from fdrl.train import epoch_draw
    audio = np.zeros((3, 4), np.float32)
    samples = ([Sample(0, "s", audio=audio, corpus="small") for _ in range(10)]
               + [Sample(0, "t", audio=audio, corpus="large") for _ in range(30)]
               + [Sample(0, "g", text=audio) for _ in range(50)])
    drawn = epoch_draw(samples, np.random.default_rng(0), text_only_per_epoch=7, balance_corpora=True)
    corpus = [samples[i].corpus for i in drawn if samples[i].audio is not None]
    assert corpus.count("small") == corpus.count("large") == 20
    large = [i for i in drawn if samples[i].corpus == "large"]
    assert len(set(large)) == 20 and set(range(10)) <= set(drawn)  # every small clip, no large clip twice
    assert sum(samples[i].audio is None for i in drawn) == 7
    plain = epoch_draw(samples, np.random.default_rng(0), text_only_per_epoch=7)
    assert sorted(i for i in plain if samples[i].audio is not None) == list(range(40))


def test_dailydialog_neutral_turns_are_drawn_as_often_as_configured():
    """Neutral DailyDialog turns weigh `dialogue_neutral`, every other text row 1: with 1000 of each of
    three kinds and weight 0.25, a draw of 300 takes about 33 of those turns (0.25 / 2.25 of the mass)."""
    import numpy as np

    from fdrl.inputs import Sample
    from fdrl.train import draw_weights, epoch_draw
    text = np.zeros((2, 4), np.float32)
    samples = ([Sample(0, f"d{i}", text=text, corpus="dailydialog") for i in range(1000)]      # neutral turns
               + [Sample(1, f"e{i}", text=text, corpus="dailydialog") for i in range(1000)]    # emotional turns
               + [Sample(0, f"g{i}", text=text, corpus="goemotions") for i in range(1000)])    # neutral, not dialogue
    weights = draw_weights(samples, neutral=0, dialogue_neutral=0.25)
    assert list(np.unique(weights[:1000])) == [0.25] and np.all(weights[1000:] == 1.0)
    rate = np.mean([np.sum(epoch_draw(samples, np.random.default_rng(k), 300, weights=weights) < 1000)
                    for k in range(20)])
    assert abs(rate - 300 * 0.25 / 2.25) < 5          # 100 if they were not thinned
    assert np.all(draw_weights(samples, neutral=None, dialogue_neutral=0.25) == 1.0)


def test_neutral_voices_are_lent_emotional_words_and_their_label():
    """With p = 0.5, about half the neutral speech samples get the words of a text-only sample with an
    emotion and take its label, without word spans; other labels, wordless text rows and p = 0 are
    left as they were."""
    import numpy as np

    from fdrl.inputs import Sample
    from fdrl.train import neutral_voice_words
    audio, spans = np.zeros((3, 4), np.float32), np.zeros((1, 4), np.int32)
    pool = {label: [Sample(label, "", text=np.full((2, 4), label, np.float32), transcript=f"words {label}")]
            for label in (0, 1, 2)}
    speech = [Sample(k % 2, "s", audio=audio, text=np.full((2, 4), 9.0, np.float32), word_spans=spans)
              for k in range(400)]
    out = neutral_voice_words(speech + [pool[0][0]], pool, 0.5, 0, np.random.default_rng(0))
    lent = [s for s in out[:400] if s.text[0, 0] != 9.0]
    assert 70 < len(lent) < 130 and all(s is t for s, t in zip(out[1:400:2], speech[1::2]))
    assert all(s.label in (1, 2) and np.all(s.text == s.label) and s.word_spans is None
               and s.transcript == f"words {s.label}" for s in lent)
    assert {s.label for s in lent} == {1, 2} and out[400] is pool[0][0]
    assert neutral_voice_words(speech, pool, 0.0, 0, np.random.default_rng(0)) == speech


def test_held_out_clips_are_also_scored_with_words_of_their_label(cfg):
    """`paired`: the clips' logits with a held-out text of their label in place of their own words;
    only asked for, and the same as reading those words in that clip."""
    import dataclasses

    import numpy as np

    from fdrl.inputs import Sample
    from fdrl.model import FDRL
    from fdrl.predict import predict_logits
    from fdrl.train import held_out_logits
    rng = np.random.default_rng(0)
    model = FDRL(cfg.model, {"audio": 4, "text": 4}, 2).eval()
    val = [Sample(k % 2, "s", audio=rng.normal(size=(5, 4)).astype(np.float32),
                  text=rng.normal(size=(3, 4)).astype(np.float32)) for k in range(4)]
    pool = [Sample(label, "", text=np.full((2, 4), label + 1.0, np.float32)) for label in (0, 1)]
    assert "paired" not in held_out_logits(model, val, None)
    logits = held_out_logits(model, val, None, pool, neutral=0)
    expected = predict_logits(model, [dataclasses.replace(v, text=pool[v.label].text) for v in val])
    np.testing.assert_allclose(logits["paired"], expected, atol=1e-5)
    # "flat": every clip with the words of the one emotion there is.
    expected = predict_logits(model, [dataclasses.replace(v, text=pool[1].text) for v in val])
    np.testing.assert_allclose(logits["flat"], expected, atol=1e-5)


def test_flat_words_ask_for_each_emotion_in_turn():
    """The "flat" condition's words cycle through the emotions (never neutral), and a clip's words are
    heard when its logits pick that emotion."""
    import numpy as np

    from fdrl.train import flat_targets, words_heard
    assert flat_targets(5, 3, neutral=0).tolist() == [1, 2, 1, 2, 1]
    logits = np.eye(3)[[1, 2, 2, 2, 0]]
    assert words_heard(logits, neutral=0).tolist() == [True, True, False, True, False]


def test_text_dropout_spares_the_rows_it_is_told_to_keep():
    """`drop_text` at p = 1 hides every transcript but those of the `keep` rows (lent words)."""
    import numpy as np
    import torch

    from fdrl.inputs import Sample
    from fdrl.model import collate
    from fdrl.train import drop_text
    rows = [Sample(0, "s", audio=np.ones((3, 4), np.float32), text=np.ones((2, 4), np.float32)) for _ in range(4)]
    keep = torch.tensor([True, False, True, False])
    batch = drop_text(collate(rows, {"audio": 4, "text": 4}), 1.0, torch.Generator().manual_seed(0), keep)
    assert batch.mask["text"].any(1).tolist() == [True, False, True, False]


def test_augmented_copies_train_beside_the_clean_clips(cfg, mini_corpus, tmp_path):
    """`train.augment_copies`: each clip is also heard perturbed (the encoders see the perturbed audio)
    and trained on, in the folds and the final fit; the copies are reported."""
    from fdrl import augment
    from fdrl.data import load_manifest
    from fdrl.features import FeatureExtractor
    aug_cfg = variant_config(cfg, {"train": {"augment_copies": 1}})
    result = train_command(aug_cfg, Corpora(manifests=[mini_corpus / "manifest.jsonl"]), tmp_path / "m.safetensors", cv="speaker")
    assert result["n_augmented"] == result["n_speech"] == 8
    clip = next(it for it in load_manifest(mini_corpus / "manifest.jsonl", list(cfg.labels.names)) if it.audio is not None)
    [(_, twin)] = augment.copies([clip], 1)
    extractor = FeatureExtractor(aug_cfg, cache=False)
    clean, heard = extractor.speech(clip), extractor.speech(twin)
    assert heard.size == pytest.approx(clean.size / twin.augment.speed, abs=2)
    assert np.array_equal(heard, twin.augment.apply(clean))
