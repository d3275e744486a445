"""Prosody frames: pitch, voicing and energy on Whisper's 20 ms grid, appended to its encoder states.

Why: Whisper's encoder is trained to recognise words, not to keep the voice's melody, yet pitch
and loudness are the classic cues of arousal (anger and happiness high, sadness low). What they
add on RAVDESS is measured by a linear probe (`scripts/speaker_probe.py`; figures in the model card).

Pitch is the lag of the highest normalized autocorrelation peak between 60 and 450 Hz in a 40 ms
Hann window (the classic autocorrelation method; Boersma, 1993, refines it); a frame is voiced
when that peak exceeds `VOICING` and its energy is within 40 dB of the utterance's loudest frame.
Unvoiced frames carry pitch interpolated from their voiced neighbours, so the contour is
continuous and the deltas mean something. The model has no positional encoding, so the deltas
that express movement are computed here. Frame i is centred on the middle of Whisper's frame i:
`prosody(audio)` has exactly as many rows as `Whisper.encode` has frames (ceil(samples / 320)).
"""
from __future__ import annotations

import numpy as np

from fdrl.audio import SAMPLE_RATE

HOP = 320                 # 20 ms: Whisper's encoder frame rate
WINDOW = 640              # 40 ms: over two periods of the lowest pitch searched (60 Hz)
F0_MIN, F0_MAX = 60.0, 450.0
VOICING = 0.5             # normalized autocorrelation peak above which a frame is voiced
SILENCE_DB = 40.0         # frames this far below the loudest one are never voiced
NAMES = ("log_f0", "d_log_f0", "voiced", "periodicity", "log_energy", "d_log_energy")
PROSODY_DIM = len(NAMES)
PROSODY_ID = "autocorr-f0-v1"  # part of the encoder identity: change it when the features change


def prosody(audio: np.ndarray) -> np.ndarray:
    """[ceil(len(audio) / HOP), PROSODY_DIM] float32 for 16 kHz mono `audio` (columns: `NAMES`)."""
    n = -(-len(audio) // HOP)
    if n == 0:
        return np.zeros((0, PROSODY_DIM), np.float32)
    pad = (WINDOW - HOP) // 2
    x = np.pad(audio.astype(np.float32), (pad, n * HOP + WINDOW - len(audio) - pad))
    frames = x[np.arange(WINDOW)[None] + HOP * np.arange(n)[:, None]] * np.hanning(WINDOW).astype(np.float32)
    power = np.mean(frames ** 2, axis=1)
    log_energy = np.log(power + 1e-10)
    spectrum = np.fft.rfft(frames, 2 * WINDOW)  # zero-padded: a linear, not circular, autocorrelation
    ac = np.fft.irfft(np.abs(spectrum) ** 2)[:, :WINDOW]
    lo, hi = int(SAMPLE_RATE / F0_MAX), int(SAMPLE_RATE / F0_MIN)
    ac = ac / np.maximum(ac[:, :1], 1e-12)
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    periodicity = np.clip(ac[np.arange(n), lag], 0.0, 1.0)
    voiced = (periodicity > VOICING) & (log_energy > log_energy.max() - SILENCE_DB * np.log(10) / 10)
    log_f0 = np.log(SAMPLE_RATE / lag)
    if voiced.any():
        log_f0 = np.interp(np.arange(n), np.flatnonzero(voiced), log_f0[voiced])
    else:
        log_f0 = np.full(n, np.log(150.0))  # no voiced frame: a neutral pitch, flagged unvoiced
    out = np.stack([log_f0, np.gradient(log_f0) if n > 1 else np.zeros(n), voiced, periodicity,
                    log_energy, np.gradient(log_energy) if n > 1 else np.zeros(n)], axis=1)
    return out.astype(np.float32)


def join(frames: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Whisper frames [T, D] with prosody rows on the same grid appended: [T, D + PROSODY_DIM].

    Both come from the same audio, so lengths agree; a row short (or long) by rounding is padded
    with the last row (or dropped), never shifted.
    """
    rows = rows[: len(frames)]
    if len(rows) < len(frames):
        rows = (np.pad(rows, ((0, len(frames) - len(rows)), (0, 0)), mode="edge") if len(rows)
                else np.zeros((len(frames), PROSODY_DIM), np.float32))
    return np.concatenate([frames, rows.astype(frames.dtype)], axis=1)
