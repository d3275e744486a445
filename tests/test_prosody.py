"""Prosody frames: pitch of known signals, the frame grid Whisper uses, and the join with its frames."""
from __future__ import annotations

import numpy as np
import pytest

from fdrl.audio import SAMPLE_RATE
from fdrl.prosody import NAMES, PROSODY_DIM, join, prosody

COL = {name: i for i, name in enumerate(NAMES)}


def voice(f0: np.ndarray | float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    """A pulse-like voiced sound (decaying harmonics) with instantaneous pitch `f0`."""
    n = int(seconds * SAMPLE_RATE)
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(f0, (n,))) / SAMPLE_RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 8))
    return (amplitude * x / np.abs(x).max()).astype(np.float32)


@pytest.mark.parametrize("f0", [95.0, 140.0, 230.0, 380.0])
def test_pitch_of_a_steady_voice(f0):
    rows = prosody(voice(f0, 0.5))
    inner = rows[3:-3]
    assert np.all(inner[:, COL["voiced"]] == 1)
    assert np.allclose(np.exp(inner[:, COL["log_f0"]]), f0, rtol=0.03)
    assert np.all(np.abs(inner[:, COL["d_log_f0"]]) < 0.01)


def test_one_row_per_whisper_frame():
    for n in (0, 1, 319, 320, 321, 16000, 38240):
        rows = prosody(np.zeros(n, np.float32))
        assert rows.shape == (-(-n // 320), PROSODY_DIM) and rows.dtype == np.float32


def test_silence_is_unvoiced_and_a_glide_rises():
    quiet_then_voice = np.concatenate([1e-4 * np.random.default_rng(0).standard_normal(8000).astype(np.float32),
                                       voice(np.linspace(120, 240, 16000), 1.0)])
    rows = prosody(quiet_then_voice)
    assert rows[:20, COL["voiced"]].sum() == 0
    assert rows[30:-3, COL["voiced"]].mean() > 0.9
    assert np.all(rows[30:-3, COL["d_log_f0"]] > 0)
    assert np.all(np.isfinite(rows[:25, COL["log_f0"]]))  # unvoiced start: the first voiced pitch carried back
    assert rows[0, COL["log_energy"]] < rows[40, COL["log_energy"]] - 10


def test_gain_shifts_log_energy_only():
    x = voice(150.0, 0.4)
    a, b = prosody(x), prosody(0.5 * x)
    assert np.allclose(a[:, COL["log_energy"]] - b[:, COL["log_energy"]], 2 * np.log(2), atol=1e-3)
    assert np.allclose(a[:, COL["log_f0"]], b[:, COL["log_f0"]])


def test_no_voice_at_all_gives_a_flat_unvoiced_contour():
    rows = prosody(np.random.default_rng(1).standard_normal(8000).astype(np.float32) * 0.1)
    assert rows[:, COL["voiced"]].sum() == 0 and np.ptp(rows[:, COL["log_f0"]]) == 0


def test_join_aligns_rows_to_frames():
    frames = np.ones((5, 3), np.float16)
    rows = np.arange(4 * PROSODY_DIM, dtype=np.float32).reshape(4, PROSODY_DIM)
    out = join(frames, rows)
    assert out.shape == (5, 3 + PROSODY_DIM) and out.dtype == np.float16
    assert np.array_equal(out[4, 3:], out[3, 3:])  # the short side padded with its last row
    assert join(frames[:2], rows).shape == (2, 3 + PROSODY_DIM)
    assert np.all(join(frames, rows[:0])[:, 3:] == 0)
