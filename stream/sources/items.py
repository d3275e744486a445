"""What every source yields: timed audio chunks and video frames, and the notice that a device went away.

Times are seconds since the start of the stream. Audio times come from sample counts (`ChunkClock`),
never from the wall clock, so the same samples get the same times on every run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fdrl.audio import SAMPLE_RATE, Resampler, to_mono


@dataclass(frozen=True, eq=False)
class AudioChunk:
    t: float              # seconds since the start of the stream, of the first sample
    samples: np.ndarray   # float32 mono at SAMPLE_RATE

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True, eq=False)
class VideoFrame:
    t: float              # seconds since the start of the stream
    image: np.ndarray     # BGR uint8, height x width x 3


@dataclass(frozen=True)
class SourceLost:
    """The last item of a live source whose device stopped mid-stream (`source`, e.g. "camera").

    Not an error: the session carries on with its other sources, and the pipeline tells the user
    with a `Fallback` event carrying `message`.
    """

    t: float
    source: str
    message: str


SourceItem = AudioChunk | VideoFrame | SourceLost
"""Anything a source yields."""


class ChunkClock:
    """Turns device or user blocks (any rate, any channel count) into timed 16 kHz mono chunks."""

    def __init__(self, rate_in: int, t0: float = 0.0) -> None:
        # Resampler keeps state across blocks (no seams, no drift); 16 kHz passes straight through.
        self._resample = Resampler(rate_in) if rate_in != SAMPLE_RATE else None
        self._t0 = t0
        self.samples_out = 0

    def __call__(self, block: np.ndarray) -> AudioChunk | None:
        """`block` is (frames,) or (frames, channels); None while it is too short to yield a sample."""
        mono = to_mono(block)
        samples = self._resample(mono) if self._resample is not None else mono.copy()
        if samples.size == 0:
            return None
        return self._stamp(samples)

    def flush(self) -> AudioChunk | None:
        """End of stream: the last resampled samples (about a millisecond), if any."""
        if self._resample is None:
            return None
        samples = self._resample.flush()
        return self._stamp(samples) if samples.size else None

    def _stamp(self, samples: np.ndarray) -> AudioChunk:
        chunk = AudioChunk(self._t0 + self.samples_out / SAMPLE_RATE, samples)
        self.samples_out += samples.size
        return chunk
