"""Audio in one shape: float32 mono at 16 kHz, whatever the source.

`iter_audio` reads any file PyAV (FFmpeg) can open, including the sound track of a video, block by
block; `decode_audio` is all of it at once. The live microphone path delivers numpy chunks at the
device's rate; `Resampler` brings those to the same shape through the same conversion (`ToMono16k`). The int16 helpers exist because webrtcvad and WAV files speak 16-bit PCM.
"""
from __future__ import annotations

import math
import wave
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from fdrl.errors import UserError

SAMPLE_RATE = 16000
WHISPER_WINDOW_S = 30  # Whisper's fixed input window; encoders.whisper_window_s may pad less
MIN_SPEECH_SAMPLES = SAMPLE_RATE // 10  # shorter audio holds no word and no emotion to label

CONVERT_HINT = "convert it to WAV or FLAC, or pass another file"


def no_samples(path: Path | str) -> UserError:
    """The error for a media file that decodes to nothing."""
    return UserError(f"{path} contains no audio samples (the file is empty or truncated; {CONVERT_HINT})")


def check_finite(samples: np.ndarray, path: Path | str) -> None:
    """A broken float file's NaN or inf would poison Whisper and every score silently: refuse it."""
    if not np.isfinite(samples).all():
        raise UserError(f"{path} contains NaN or infinite samples (a corrupt float recording; "
                        "re-export it as 16-bit WAV or FLAC)")


def check_input_file(path: Path, what: str = "audio file") -> None:
    """A UserError unless `path` is an existing regular file: a folder, a pipe or a device is named as such."""
    if not path.exists():
        raise UserError(f"{what} not found: {path} (check the path)")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a file (pass the {what} inside it)")
    if not path.is_file():
        raise UserError(f"{path} is a pipe or device, not a regular file (save the stream to a file first)")


def decode_audio(path: str | Path, start: float | None = None, end: float | None = None) -> np.ndarray:
    """Decode the first audio track of `path` to float32 mono at 16 kHz, optionally cut to [start, end) seconds.

    The file is decoded from its beginning and decoding stops once `end` is reached: exact, and
    cheap for segments of a long recording. Every failure a user can cause is a `UserError`.
    """
    path = Path(path)
    if start is not None and not (math.isfinite(start) and start >= 0):
        raise UserError(f"start={start} for {path} is not a time (use seconds from the start of the file)")
    if end is not None and not math.isfinite(end):
        raise UserError(f"end={end} for {path} is not a time (use seconds from the start of the file)")
    if start is not None and end is not None and end <= start:
        raise UserError(f"end={end} is not after start={start} for {path} (give an end later than the start)")
    first = 0 if start is None else round(start * SAMPLE_RATE)
    last = None if end is None else round(end * SAMPLE_RATE)
    blocks: list[np.ndarray] = []
    total = 0
    for block in iter_audio(path):
        blocks.append(block)
        total += block.size
        if last is not None and total >= last:
            break
    audio = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    if audio.size == 0:
        raise no_samples(path)
    if first >= audio.size:
        raise UserError(f"start={start}s is beyond the end of {path} ({audio.size / SAMPLE_RATE:.2f}s long)")
    return audio[first:last]


def iter_audio(path: str | Path) -> Iterator[np.ndarray]:
    """The first audio track of `path` as float32 mono 16 kHz blocks, decoded lazily (constant memory).

    The one decoder of the project: `decode_audio` (training, eval) and the file source (replay)
    both read through it. Fails with a UserError for a file that is not media, has no audio track,
    is corrupt, or holds NaN or infinite samples (they would reach every score).
    """
    path = Path(path)
    check_input_file(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError) as e:
        raise _undecodable(path, e) from None
    with container:
        if not container.streams.audio:
            raise UserError(f"{path} has no audio track (use a file with sound)")
        to16k = ToMono16k()
        try:
            for frame in container.decode(container.streams.audio[0]):
                yield from _finite(to16k.frame(frame), path)
            yield from _finite(to16k.flush(), path)
        except (av.FFmpegError, OSError) as e:
            raise _undecodable(path, e) from None


def _undecodable(path: Path, e: Exception) -> UserError:
    reason = getattr(e, "strerror", None) or str(e)
    return UserError(f"cannot decode {path}: {reason} (unreadable, corrupt or truncated, or unsupported; {CONVERT_HINT})")


def _finite(blocks: list[np.ndarray], path: Path) -> list[np.ndarray]:
    for block in blocks:
        check_finite(block, path)
    return blocks


class ToMono16k:
    """Streaming conversion of audio frames, at any rate, layout and sample format, to float32 mono 16 kHz.

    FFmpeg's resampler (through PyAV) converts each channel to packed float at 16 kHz; channels
    are then averaged here (FFmpeg's own downmix weights them by 1/sqrt(2) and can exceed 1.0).
    Packed output is one plane whatever the channel count, which keeps PyAV away from its
    per-plane copy (it crashes on planar frames of eight or more channels). A stream may change
    rate, layout or format midway; the resampler is fixed at its first frame, so a change drains
    it and starts a new one. Files and the microphone go through this same conversion.
    """

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._setup: tuple[str, str, int] | None = None

    def frame(self, frame: av.AudioFrame) -> list[np.ndarray]:
        """The 16 kHz mono samples that `frame` completes (the resampler holds back a few)."""
        setup = (frame.format.name, frame.layout.name, frame.sample_rate)
        out = []
        if setup != self._setup:
            out = self.flush()
            self._resampler, self._setup = av.AudioResampler(format="flt", rate=SAMPLE_RATE), setup
        return out + _mono(self._resampler.resample(frame))  # type: ignore[union-attr]

    def block(self, samples: np.ndarray, rate: int) -> list[np.ndarray]:
        """The same for a numpy block, [n] or [n, channels] (sounddevice's layout), at `rate` Hz."""
        mono = to_mono(samples)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono)[None, :], format="flt", layout="mono")
        frame.sample_rate = int(rate)
        return self.frame(frame)

    def flush(self) -> list[np.ndarray]:
        """End of stream (or of one setup): the samples the resampler still holds."""
        if self._resampler is None:
            return []
        out = _mono(self._resampler.resample(None))
        self._resampler = self._setup = None
        return out


def _mono(frames: list[av.AudioFrame]) -> list[np.ndarray]:
    return [frame.to_ndarray().reshape(-1, frame.layout.nb_channels).mean(axis=1, dtype=np.float32) for frame in frames]


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


class Resampler:
    """Streaming resampler for mono blocks (the microphone path): seamless across blocks, no drift.

    It is `ToMono16k`, the conversion files are decoded with, so live audio is resampled exactly
    as the training clips were. Output lags input by the filter's delay until `flush()`; after
    `flush()`, start a new Resampler.
    """

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE) -> None:
        if rate_in <= 0 or rate_out != SAMPLE_RATE:
            raise ValueError(f"Resampler converts a positive rate to {SAMPLE_RATE} Hz, got {rate_in} -> {rate_out}")
        self.rate_in = int(rate_in)
        self._convert = ToMono16k()

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """Resample the next block (1-D float); returns the outputs that are complete so far."""
        chunk = np.asarray(chunk, np.float32).reshape(-1)
        if self.rate_in == SAMPLE_RATE:
            return chunk
        return _joined(self._convert.block(chunk, self.rate_in))

    def flush(self) -> np.ndarray:
        """The remaining outputs."""
        return _joined(self._convert.flush())


def _joined(blocks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def resample(audio: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a whole 1-D signal (a `Resampler` fed once and flushed); same rate returns float32 as is."""
    if rate_in == rate_out:
        return np.asarray(audio, np.float32).reshape(-1)
    if rate_out == SAMPLE_RATE:
        r = Resampler(rate_in)
        return np.concatenate([r(audio), r.flush()])
    # Tests and fixtures also go the other way (16 kHz to 44.1 kHz): the same FFmpeg resampler.
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate_out)
    frame = av.AudioFrame.from_ndarray(np.asarray(audio, np.float32).reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = int(rate_in)
    return _joined([f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]])
