"""The feature cache: a second pass runs no encoder, and changing one encoder re-runs only that one."""
from __future__ import annotations

import numpy as np
import pytest

from fdrl import checkpoint, config
from fdrl.data import load_manifest
from fdrl.features import FeatureExtractor
from fdrl.prosody import PROSODY_DIM


LABELS = ["neutral", "happiness", "sadness", "anger"]


@pytest.fixture(scope="module")
def items(mini_corpus):
    both = load_manifest(mini_corpus / "manifest.jsonl", LABELS)
    return [it for it in both if it.audio is not None][:2] + [it for it in both if it.audio is None][:2]


def _extractor(tmp_path, *overrides: str) -> FeatureExtractor:
    return FeatureExtractor(config.load(overrides=[f"paths.cache_dir='{tmp_path}'", *overrides]))


def _forbid(monkeypatch, extractor: FeatureExtractor, *encoders: str) -> None:
    for name in encoders:
        monkeypatch.setattr(extractor, f"_{name}", None)
        monkeypatch.setattr(type(extractor), name, property(lambda self, n=name: pytest.fail(f"{n} ran again")))


def test_second_pass_is_served_from_the_cache(items, tmp_path, monkeypatch):
    first = _extractor(tmp_path).extract(items, LABELS)
    assert first[0].audio is not None and first[0].word_spans is not None and len(first[0].word_spans) > 0
    assert first[2].audio is None and first[2].text is not None
    again = _extractor(tmp_path)
    _forbid(monkeypatch, again, "whisper", "text")
    for a, b in zip(first, again.extract(items, LABELS)):
        assert a.transcript == b.transcript and a.label == b.label
        for name in ("audio", "text", "word_spans"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None and y is None) or np.array_equal(x, y)


def test_a_new_text_encoder_reuses_the_cached_audio(items, tmp_path, monkeypatch):
    first = _extractor(tmp_path).extract(items[:1], LABELS)[0]
    other = _extractor(tmp_path, "encoders.text_max_tokens=48")  # another text identity
    assert other.encoder_ids["text"] != _extractor(tmp_path).encoder_ids["text"]
    _forbid(monkeypatch, other, "whisper")
    again = other.extract(items[:1], LABELS)[0]
    assert np.array_equal(first.audio, again.audio) and first.transcript == again.transcript
    assert np.array_equal(first.word_spans, again.word_spans)


def test_another_decoding_transcribes_again_and_a_gate_threshold_does_not(items, tmp_path, monkeypatch):
    greedy = _extractor(tmp_path, "asr.beam_size=1").extract(items[:1], LABELS)[0]
    beam = _extractor(tmp_path, "asr.beam_size=2")
    passes = []
    process = beam.whisper.process
    monkeypatch.setattr(beam.whisper, "process", lambda *a, **k: passes.append(1) or process(*a, **k))
    assert beam.extract(items[:1], LABELS)[0].transcript  # this decoding's words, not beam 1's from the cache
    assert passes == [1]
    gate_changed = _extractor(tmp_path, "asr.beam_size=1", "asr.gate_min_word_prob=0.6")  # acts on the cached scores
    _forbid(monkeypatch, gate_changed, "whisper")
    assert gate_changed.extract(items[:1], LABELS)[0].transcript == greedy.transcript


def test_what_whisper_hears_after_the_crop_keys_the_transcript_not_the_frames(items, tmp_path, monkeypatch):
    """`vad.asr_tail_ms` changes what the decoder hears, so the clip is transcribed again; the
    model's frames stay those of the crop."""
    crop_only = _extractor(tmp_path, "vad.asr_tail_ms=0").extract(items[:1], LABELS)[0]
    heard = _extractor(tmp_path, "vad.asr_tail_ms=200")
    passes = []
    process = heard.whisper.process
    monkeypatch.setattr(heard.whisper, "process", lambda *a, **k: passes.append(k["after"]) or process(*a, **k))
    again = heard.extract(items[:1], LABELS)[0]
    assert len(passes) == 1 and passes[0][0].size > 0
    np.testing.assert_array_equal(again.audio, crop_only.audio)


def test_the_encoder_window_is_part_of_the_audio_identity(tmp_path):
    window10, window30 = _extractor(tmp_path, "encoders.whisper_window_s=10"), _extractor(tmp_path, "encoders.whisper_window_s=30")
    assert window10.encoder_ids["whisper"] == "bundled:int8:layer2:window10s"  # a checkpoint is trained for one window
    assert window30.encoder_ids["whisper"] == "bundled:int8:layer2"  # Whisper's own window: checkpoints from before the setting
    assert window10.encoder_ids["text"] == window30.encoder_ids["text"]
    default = _extractor(tmp_path)
    checkpoint.load(default.cfg.resolve(default.cfg.paths.checkpoint), default.encoder_ids)  # the defaults are the shipped checkpoint's


def test_a_torn_cache_file_is_recomputed(items, tmp_path):
    text_item = items[2]
    _extractor(tmp_path).extract([text_item], LABELS)
    [torn] = list((tmp_path / "features" / "text").rglob("*.npz"))
    torn.write_bytes(b"PK\x03\x04 torn")
    [sample] = _extractor(tmp_path).extract([text_item], LABELS)
    assert sample.text is not None and torn.stat().st_size > 100


def test_the_live_engine_sees_the_audio_features_training_sees(items, tiny_checkpoint):
    """Same speech in, same model input out: Whisper frames (thinned) with their prosody rows, bit for bit
    (both paths make it with `fdrl.inputs.Recipe`)."""
    from fdrl.audio import decode_audio
    from stream.inference import Engine, Request

    cfg = config.load(overrides=["vad.asr_tail_ms=200"])  # Whisper hears past the crop: the words must match too
    offline = FeatureExtractor(cfg, cache=False)
    [arrays] = offline.encode(items[:1])
    engine = Engine(cfg, tiny_checkpoint, device="cpu")
    speech, after = offline.crop(decode_audio(items[0].audio))  # what the live VAD hands over
    assert 0 < after.size <= cfg.vad.frames(cfg.vad.asr_tail_ms) * cfg.vad.frame_ms * 16  # as far as the clip goes
    request = Request(speech, after=after)
    encoded = engine.encode([request])
    [live] = engine.audio_frames([request], encoded)
    assert live.shape == arrays["audio"].shape and live.shape[1] == 384 + PROSODY_DIM
    np.testing.assert_array_equal(live, arrays["audio"])
    assert engine.transcribe(request, encoded[0][1]).text == str(arrays["transcript"])  # the words too
