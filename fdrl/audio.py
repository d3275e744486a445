"""Audio in one shape: float32 mono at 16 kHz, whatever the source.

`decode_audio` reads any file PyAV (FFmpeg) can open, including the sound track of a video. The
live microphone path delivers numpy chunks at the device's rate; `to_mono` and `Resampler` bring
those to the same shape. The int16 helpers exist because webrtcvad and WAV files speak 16-bit PCM.
"""
from __future__ import annotations

import math
import wave
from pathlib import Path

import av
import numpy as np

from fdrl.errors import UserError

SAMPLE_RATE = 16000

CONVERT_HINT = "convert it to WAV or FLAC, or pass another file"


def no_samples(path: Path | str) -> UserError:
    """The error for a media file that decodes to nothing."""
    return UserError(f"{path} contains no audio samples (the file is empty or truncated; {CONVERT_HINT})")


def check_finite(samples: np.ndarray, path: Path | str) -> None:
    """A broken float file's NaN or inf would poison Whisper and every score silently: refuse it."""
    if not np.isfinite(samples).all():
        raise UserError(f"{path} contains NaN or infinite samples (a corrupt float recording; "
                        "re-export it as 16-bit WAV or FLAC)")


def decode_audio(path: str | Path, start: float | None = None, end: float | None = None) -> np.ndarray:
    """Decode the first audio track of `path` to float32 mono at 16 kHz, optionally cut to [start, end) seconds.

    Channels are averaged (FFmpeg's own downmix weights them by 1/sqrt(2), which can exceed 1.0).
    The file is decoded from its beginning and decoding stops once `end` is reached: exact, and
    cheap for segments of a long recording. Every failure a user can cause is a `UserError`.
    """
    path = Path(path)
    if start is not None and start < 0:
        raise UserError(f"start={start} for {path} is negative (use seconds from the start of the file)")
    if start is not None and end is not None and end <= start:
        raise UserError(f"end={end} is not after start={start} for {path} (give an end later than the start)")
    if not path.exists():
        raise UserError(f"audio file not found: {path} (check the path)")
    if not path.is_file():
        raise UserError(f"{path} is not a file (pass an audio or video file)")

    first = 0 if start is None else round(start * SAMPLE_RATE)
    last = None if end is None else round(end * SAMPLE_RATE)
    try:
        audio = _decode(path, stop_after=last)
    except (av.FFmpegError, OSError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise UserError(f"cannot decode {path}: {reason} (unreadable, corrupt or unsupported; {CONVERT_HINT})") from None
    if audio.size == 0:
        raise no_samples(path)
    check_finite(audio, path)
    if first >= audio.size:
        raise UserError(f"start={start}s is beyond the end of {path} ({audio.size / SAMPLE_RATE:.2f}s long)")
    return audio[first:last]


def _decode(path: Path, stop_after: int | None) -> np.ndarray:
    """All samples of the first audio stream (or the first `stop_after` and a little more)."""
    with av.open(str(path), metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise UserError(f"{path} has no audio track (use a file with sound)")
        stream = container.streams.audio[0]
        # Keep the channel layout here and average below; only format and rate are converted.
        resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        total = 0  # samples in chunks (a resampler change mid-stream may add a few uncounted: harmless)
        setup = None
        for frame in container.decode(stream):
            # A stream may change rate or layout midway; PyAV's resampler is fixed at its first frame.
            if setup is not None and setup != (frame.format.name, frame.layout.name, frame.sample_rate):
                chunks += _mono(resampler.resample(None))
                resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
            setup = (frame.format.name, frame.layout.name, frame.sample_rate)
            new = _mono(resampler.resample(frame))
            chunks += new
            total += sum(c.size for c in new)
            if stop_after is not None and total >= stop_after:
                break
        else:  # the whole stream was read: drain the resampler
            chunks += _mono(resampler.resample(None))
    if not chunks:
        return np.zeros(0, np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _mono(frames: list[av.AudioFrame]) -> list[np.ndarray]:
    return [frame.to_ndarray().mean(axis=0, dtype=np.float32) for frame in frames]


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float audio as 16-bit PCM WAV (values outside [-1, 1] are clipped)."""
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(to_int16(audio))


def to_int16(audio: np.ndarray) -> bytes:
    """Float audio in [-1, 1] -> little-endian 16-bit PCM bytes, as webrtcvad and WAV expect."""
    scaled = np.round(np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


def from_int16(pcm: bytes) -> np.ndarray:
    """16-bit PCM bytes -> float32 in [-1, 1) (the inverse of `to_int16` up to rounding)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def to_mono(chunk: np.ndarray) -> np.ndarray:
    """[n, channels] (sounddevice's layout) -> [n] float32 by averaging channels; 1-D passes through."""
    chunk = np.asarray(chunk, dtype=np.float32)
    return chunk.mean(axis=1, dtype=np.float32) if chunk.ndim == 2 else chunk


# Windowed-sinc band-limited interpolation (Smith's method, as in libsamplerate and resampy).
# Why not linear interpolation: going down from 44.1/48 kHz, content above 8 kHz would alias into
# the speech band. Each output sample is a Kaiser-windowed sinc of the neighbouring inputs, with the
# cut-off at 94 % of the lower Nyquist frequency: about -80 dB of alias rejection. The ratio is
# rational, so output n falls at one of rate_out / gcd fractional phases; the kernel is tabulated
# once per phase (a polyphase filter bank), and resampling is a gather and a dot product.
_ZERO_CROSSINGS = 16
_ROLLOFF = 0.94
_KAISER_BETA = 8.0


class Resampler:
    """Streaming resampler: feed consecutive chunks, get seamless output (for the microphone path).

    Each output needs a few input samples beyond it, so output lags input by about 1 ms until
    `flush()`. Output n sits at input time n * rate_in / rate_out exactly (integer arithmetic), so
    hours of audio do not drift. After `flush()`, start a new Resampler.
    """

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        self._step = math.gcd(self.rate_in, self.rate_out)      # phases are multiples of step / rate_out
        self._table, self.reach = _kernel_table(self.rate_in, self.rate_out, self._step)
        self._buffer = np.zeros(self.reach, np.float32)        # zeros before the first sample
        self._buffer_start = -self.reach                       # input index of _buffer[0]
        self._received = 0                                     # input samples fed so far
        self._emitted = 0                                      # output samples returned so far

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """Resample the next chunk (1-D float); returns the outputs that are complete so far."""
        chunk = np.asarray(chunk, np.float32).reshape(-1)
        if self.rate_in == self.rate_out:
            return chunk
        self._buffer = np.concatenate([self._buffer, chunk])
        self._received += chunk.size
        # Output n is complete once input floor(t_n) + reach has arrived.
        return self._emit(_count_below(self._buffer_start + self._buffer.size - self.reach, self.rate_in, self.rate_out))

    def flush(self) -> np.ndarray:
        """The remaining outputs, treating the input as followed by silence."""
        if self.rate_in == self.rate_out:
            return np.zeros(0, np.float32)
        self._buffer = np.concatenate([self._buffer, np.zeros(self.reach + 1, np.float32)])
        return self._emit(_count_below(self._received, self.rate_in, self.rate_out))

    def _emit(self, stop: int) -> np.ndarray:
        n = np.arange(self._emitted, max(stop, self._emitted), dtype=np.int64)
        position = n * self.rate_in                            # t_n * rate_out, exact
        base = position // self.rate_out - self._buffer_start  # floor(t_n) in _buffer coordinates
        phase = (position % self.rate_out) // self._step
        out = np.empty(n.size, np.float32)
        offsets = np.arange(-self.reach + 1, self.reach + 1)
        for lo in range(0, n.size, 8192):  # blocks keep the [outputs, taps] matrices small
            block = slice(lo, lo + 8192)
            taps = base[block, None] + offsets
            out[block] = np.einsum("ij,ij->i", self._buffer[taps], self._table[phase[block]])
        self._emitted += n.size
        # Drop inputs that no future output can reach.
        drop = max(0, self._emitted * self.rate_in // self.rate_out - self.reach - self._buffer_start)
        self._buffer = self._buffer[drop:]
        self._buffer_start += drop
        return out


def _kernel_table(rate_in: int, rate_out: int, step: int) -> tuple[np.ndarray, int]:
    """Kaiser-windowed sinc weights [phases, 2 * reach] for fractional offsets phase * step / rate_out."""
    cutoff = 0.5 * min(1.0, rate_out / rate_in) * _ROLLOFF      # cycles per input sample
    half_width = _ZERO_CROSSINGS / (2 * cutoff)                 # kernel reach in input samples
    reach = math.ceil(half_width)
    frac = np.arange(rate_out // step) * step / rate_out
    d = frac[:, None] - np.arange(-reach + 1, reach + 1)        # distance from each tap to the output time
    window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1 - (d / half_width) ** 2, 0, None))) / np.i0(_KAISER_BETA)
    weights = np.sinc(2 * cutoff * d) * window
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32), reach  # unit gain at DC


def _count_below(limit: int, rate_in: int, rate_out: int) -> int:
    """How many outputs n >= 0 have their time n * rate_in / rate_out strictly below input index `limit`."""
    return max(0, -(-limit * rate_out // rate_in))  # ceil(limit * rate_out / rate_in)


def resample(audio: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a whole 1-D signal (a `Resampler` fed once and flushed); same rate returns float32 as is."""
    r = Resampler(rate_in, rate_out)
    return np.concatenate([r(audio), r.flush()])
