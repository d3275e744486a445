"""Training-time audio perturbations (fdrl/augment.py): each one does what its name says, every draw
is reproducible, and a held-out clip's perturbed copy never reaches a fold's training side."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fdrl import augment
from fdrl.audio import SAMPLE_RATE
from fdrl.data import Item
from fdrl.inputs import Sample
from fdrl.train import fold_training


def _sine(hz: float, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE).astype(np.float32)


def _peak_hz(x: np.ndarray) -> float:
    return float(np.fft.rfftfreq(x.size, 1 / SAMPLE_RATE)[np.argmax(np.abs(np.fft.rfft(x)))])


def _db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2))


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_moves_pitch_and_length_together(factor):
    out = augment.change_speed(_sine(200.0), factor)
    assert out.dtype == np.float32
    assert out.size == pytest.approx(SAMPLE_RATE / factor, abs=2)
    assert _peak_hz(out) == pytest.approx(200.0 * factor, abs=1.5)


@pytest.mark.parametrize("color", ["white", "pink", "brown"])
def test_noise_is_added_at_the_asked_snr(color):
    x = _sine(300.0)
    noisy = augment.add_noise(x, 12.0, color, np.random.default_rng(1))
    assert _db(x) - _db(noisy - x) == pytest.approx(12.0, abs=0.01)


def test_noise_colours_fall_off_as_1_over_f_to_the_k():
    rng = np.random.default_rng(0)
    for color, slope_db in (("white", 0.0), ("pink", -10.0), ("brown", -20.0)):  # per decade of frequency
        power = np.abs(np.fft.rfft(augment.colored_noise(2 ** 16, color, rng))) ** 2
        f = np.fft.rfftfreq(2 ** 16, 1 / SAMPLE_RATE)
        low, high = power[(f > 100) & (f < 200)].mean(), power[(f > 1000) & (f < 2000)].mean()
        assert 10 * np.log10(high / low) == pytest.approx(slope_db, abs=1.5)


def test_telephone_band_passes_speech_band_only():
    out = {hz: _db(augment.band_limit(_sine(hz))[4000:]) - _db(_sine(hz)) for hz in (80.0, 1000.0, 6000.0)}
    assert abs(out[1000.0]) < 1.0 and out[80.0] < -20 and out[6000.0] < -20


def test_reverberation_keeps_length_and_peak_and_adds_a_decaying_tail():
    click = np.zeros(SAMPLE_RATE, np.float32)
    click[100] = 0.5
    wet = augment.reverberate(click, 0.4, np.random.default_rng(0))
    assert wet.size == click.size and np.max(np.abs(wet)) == pytest.approx(0.5, rel=1e-5)
    early, late = _db(wet[200:1800]), _db(wet[6100:7700])  # centred 0.056 s and 0.425 s after the click
    assert early - late == pytest.approx(60 * (0.425 - 0.056) / 0.4, abs=5)  # 60 dB per RT60


def test_gain_saturates_like_an_overdriven_input():
    out = augment.clip_gain(_sine(100.0) * 0.5, 12.0)
    assert np.max(np.abs(out)) == 1.0 and augment.clip_gain(_sine(100.0), -6.0).max() == pytest.approx(0.501, abs=1e-3)


def test_draws_are_reproducible_and_a_speakers_voice_shift_is_shared():
    a = augment.Augment.draw("03-01-05-01-01-01-01.wav:None:None", "ravdess-01", 1)
    assert a == augment.Augment.draw("03-01-05-01-01-01-01.wav:None:None", "ravdess-01", 1)
    same_speaker = {augment.Augment.draw(f"clip{i}", "ravdess-01", 1).speed for i in range(20)}
    assert len(same_speaker) == 1 and same_speaker <= set(augment.SPEEDS)
    tags = {augment.Augment.draw(f"clip{i}", "s", 1).tag for i in range(50)}
    assert len(tags) == 50
    x = _sine(200.0)
    assert np.array_equal(a.apply(x), a.apply(x))


def test_copies_are_new_speakers_of_the_same_label_and_skip_text():
    items = [Item("anger", "ravdess-01", Path("/d/a.wav"), corpus="ravdess"), Item("sadness", "", text="so sad")]
    [(source, twin)] = augment.copies(items, 1)
    assert source == 0 and twin.label == "anger" and twin.corpus == "ravdess" and twin.audio == items[0].audio
    assert twin.speaker == f"ravdess-01~{twin.augment.speed:g}" and twin.augment is not None
    assert [s for s, _ in augment.copies(items, 3)] == [0, 0, 0]


def test_a_fold_trains_on_copies_of_its_own_clips_only():
    clips = [Sample(label=k, speaker=str(k)) for k in range(4)]
    twins = [(k, Sample(label=k, speaker=f"{k}~1.1")) for k in range(4)]
    text = [Sample(label=0, speaker="")]
    train = fold_training(clips, [0, 2], text, twins)
    assert [s.speaker for s in train] == ["0", "2", "", "0~1.1", "2~1.1"]


def test_a_perturbed_copy_is_cached_apart_from_its_clip(tmp_path):
    from fdrl.features import _clip_key
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    clip = Item("anger", "s", wav)
    [(_, twin)] = augment.copies([clip], 1)
    [(_, second)] = [pair for pair in augment.copies([clip], 2) if pair[1].augment != twin.augment]
    keys = {_clip_key("whisper", it, wav) for it in (clip, twin, second)}
    assert len(keys) == 3 and _clip_key("whisper", clip, wav) == _clip_key("whisper", Item("anger", "s", wav), wav)
