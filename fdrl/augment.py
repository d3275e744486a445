"""Training-only perturbations of a speech clip: other voices, rooms, microphones and noise.

The voice model learned the few speakers of its corpora; a live user is none of them. Each
augmented copy of a clip (`Augment`) is the same words and emotion as heard through another voice
and channel:

- **speed** (Ko et al., 2015): the clip resampled by 0.9 or 1.1, which moves pitch, formants and
  tempo together, as another speaker's voice would. Drawn once per (speaker, copy), so a speaker's
  perturbed clips form a new speaker that speaker normalization learns like any other.
- **noise** (white, pink or brown) at a random SNR, **reverberation** (an exponentially decaying
  noise impulse response), **telephone band-limiting** (300-3,400 Hz) and **gain** with clipping:
  drawn per clip.

Every draw comes from a seed made of the clip, its speaker and the copy number, so a copy is the
same in every run (its features are cached like any clip's) and `Augment.tag` names it in cache keys.
The math is pure numpy/scipy on float32 mono at `SAMPLE_RATE`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
from scipy import signal

from fdrl.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from fdrl.data import Item

SPEEDS = (0.9, 1.1)
NOISE_P, REVERB_P, PHONE_P = 0.5, 0.3, 0.2
SNR_DB = (5.0, 25.0)
RT60_S = (0.2, 0.8)
GAIN_DB = (-12.0, 6.0)


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class Augment:
    """One perturbation of one clip; `apply` is deterministic."""

    speed: float = 1.0
    noise: str = ""           # "" | "white" | "pink" | "brown"
    snr_db: float = 0.0
    rt60_s: float = 0.0       # 0: no reverberation
    phone: bool = False
    gain_db: float = 0.0
    seed: int = 0             # the noise and impulse response samples

    @classmethod
    def draw(cls, clip: str, speaker: str, copy: int) -> Augment:
        """Copy number `copy` (1, 2, ...) of `clip`; its speed is shared by the speaker's clips."""
        rng = _rng(clip, speaker, copy)
        return cls(speed=float(_rng(speaker, copy).choice(SPEEDS)),
                   noise=str(rng.choice(["white", "pink", "brown"])) if rng.random() < NOISE_P else "",
                   snr_db=round(float(rng.uniform(*SNR_DB)), 2),
                   rt60_s=round(float(rng.uniform(*RT60_S)), 3) if rng.random() < REVERB_P else 0.0,
                   phone=bool(rng.random() < PHONE_P),
                   gain_db=round(float(rng.uniform(*GAIN_DB)), 2),
                   seed=int(rng.integers(2**31)))

    @property
    def tag(self) -> str:
        """A stable name of this perturbation, for cache keys and the augmented copy's speaker."""
        return (f"speed={self.speed:g},noise={self.noise or 'none'}@{self.snr_db:g},rt60={self.rt60_s:g},"
                f"phone={int(self.phone)},gain={self.gain_db:g},seed={self.seed}")

    def apply(self, audio: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        x = change_speed(np.asarray(audio, np.float32), self.speed)
        if self.rt60_s:
            x = reverberate(x, self.rt60_s, rng)
        if self.phone:
            x = band_limit(x)
        if self.noise:
            x = add_noise(x, self.snr_db, self.noise, rng)
        return clip_gain(x, self.gain_db)


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play `audio` `factor` times as fast (pitch and tempo together): polyphase resampling by 1/factor."""
    if factor == 1.0:
        return audio
    ratio = Fraction(1 / factor).limit_denominator(100)
    return signal.resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with a 1/f^k power spectrum: white k=0, pink k=1, brown k=2."""
    k = {"white": 0, "pink": 1, "brown": 2}[color]
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / f ** (k / 2), n)
    return (noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, color: str, rng: np.random.Generator) -> np.ndarray:
    """`audio` plus noise `snr_db` below its power."""
    power = float(np.mean(audio.astype(np.float64) ** 2))
    if power == 0.0:
        return audio
    scale = np.sqrt(power / 10 ** (snr_db / 10))
    return (audio + scale * colored_noise(audio.size, color, rng)).astype(np.float32)


def reverberate(audio: np.ndarray, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """`audio` in a room: convolved with a direct path plus exponentially decaying noise whose energy
    falls by 60 dB in `rt60_s`, cut to the clip's length and scaled back to its peak."""
    n = int(rt60_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    rir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60_s)  # 60 dB = e^-6.9 in amplitude
    rir[0] = 1.0 / 0.3  # the direct path, above the reflections' first samples
    rir /= np.sqrt(np.sum(rir ** 2))
    wet = signal.fftconvolve(audio, rir)[:audio.size]
    peak = float(np.max(np.abs(wet))) or 1.0
    return (wet * (float(np.max(np.abs(audio))) / peak)).astype(np.float32)


def band_limit(audio: np.ndarray, low_hz: float = 300.0, high_hz: float = 3400.0) -> np.ndarray:
    """A telephone channel: 4th-order Butterworth band-pass."""
    sos = signal.butter(4, [low_hz, high_hz], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    return signal.sosfilt(sos, audio).astype(np.float32)


def clip_gain(audio: np.ndarray, gain_db: float) -> np.ndarray:
    """`audio` louder or quieter by `gain_db`, clipped to [-1, 1] as a saturating input would."""
    return np.clip(audio * 10 ** (gain_db / 20), -1.0, 1.0).astype(np.float32)


def copies(items: Sequence[Item], n: int) -> list[tuple[int, Item]]:
    """`n` augmented copies of each item with audio, as (index of the clean item, copy). A copy's
    speaker is its speaker's perturbed voice (`"03~0.9"`), normalized as a speaker of its own."""
    out = []
    for i, item in enumerate(items):
        if item.audio is None:
            continue
        for k in range(1, n + 1):
            aug = Augment.draw(f"{item.audio.name}:{item.start}:{item.end}", item.speaker, k)
            out.append((i, dataclasses.replace(item, augment=aug, speaker=f"{item.speaker}~{aug.speed:g}")))
    return out
