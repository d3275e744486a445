"""Speech segmentation: a pure state machine over per-frame voice decisions.

No audio devices, no asyncio, no wall clock: `Segmenter.feed()` takes float32 samples in chunks of
any length and yields events whose times are counted in samples from the first one fed, so a file
and a live microphone segment identically, and any chunking gives the same result.

The rules, per frame of `frame_ms`:

* Idle. The last `preroll_ms` of frames form the trigger window. When at least `speech_ratio` of
  them are voiced, a segment opens. It starts `preroll_ms` before the first voiced frame of the
  window (as far as history reaches), so the onset of the first word is never clipped.
* Speaking. After `hangover_ms` of consecutive unvoiced frames the segment closes. Its end is the
  last voiced frame plus `tail_ms` (none by default, as in the training clips, which the same
  segmenter crops); the rest of the hangover is only waiting and is left out. The next
  `asr_tail_ms` of it travel with the segment as `after`: Whisper hears them, to finish a last
  word the voice decision cut short, but they are not part of the segment.
* Pausing. With `early_ms` set (below `hangover_ms`), the first `early_ms` of a silence yields a `SegmentPause` holding
  exactly the audio (and `after`) the segment would close with if the silence lasts: the streaming pipeline
  starts the expensive work then, and the `Segment` that follows with the same samples finds it
  done. Speech that resumes only wastes that work; it never changes a segment.
* Segments whose voiced span (first voiced frame to last voiced frame, padding not counted) is
  shorter than `min_utterance_ms` are discarded (clicks, coughs) and counted in `discarded`.
* A segment reaching `max_utterance_ms` is cut there (`forced_split=True`) and a new one continues
  immediately from the cut, without pre-roll, so long monologues still get labelled in pieces.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from fdrl.audio import SAMPLE_RATE, to_int16
from fdrl.config import Vad
from fdrl.errors import UserError

VAD_SAMPLE_RATES = (8000, 16000, 32000, 48000)  # the rates webrtcvad accepts


@dataclass(frozen=True)
class SegmentStart:
    """A segment opened; `start` includes the pre-roll. A `Segment` or `SegmentDiscarded` follows."""

    start: float


def _nothing() -> np.ndarray:
    return np.zeros(0, np.float32)


@dataclass(frozen=True, eq=False)
class Segment:
    """A closed segment: `audio` holds exactly the samples from `start` to `end`; `after`, the
    `asr_tail_ms` that followed it, for Whisper only (none after a forced split: speech goes on)."""

    start: float
    end: float
    audio: np.ndarray
    forced_split: bool = False
    after: np.ndarray = field(default_factory=_nothing)

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, eq=False)
class SegmentPause:
    """`early_ms` of silence in an open segment: `audio` is what it will close with if no speech resumes."""

    start: float
    end: float
    audio: np.ndarray
    after: np.ndarray = field(default_factory=_nothing)


@dataclass(frozen=True)
class SegmentDiscarded:
    """The open segment closed with too little speech (see `min_utterance_ms`); no `Segment` follows."""

    start: float
    end: float


SegmentEvent = Union[SegmentStart, SegmentPause, Segment, SegmentDiscarded]


def level_db(chunk: np.ndarray) -> float:
    """RMS level in dBFS (a full-scale sine is -3 dB), floored at -100 dB for silence."""
    if chunk.size == 0:
        return -100.0
    rms = float(np.sqrt(np.mean(np.square(chunk, dtype=np.float64))))
    return max(-100.0, 20.0 * math.log10(rms + 1e-12))


def webrtc_is_speech(aggressiveness: int, sample_rate: int) -> Callable[[bytes], bool]:
    """webrtcvad's per-frame decision over 16-bit PCM bytes."""
    import webrtcvad

    vad = webrtcvad.Vad(aggressiveness)
    return lambda pcm: vad.is_speech(pcm, sample_rate)


@dataclass
class _Frame:
    index: int
    audio: np.ndarray
    voiced: bool


class Segmenter:
    """Cuts a stream of samples into speech segments (see the module docstring for the rules)."""

    def __init__(self, options: Vad | None = None, sample_rate: int = SAMPLE_RATE,
                 is_speech: Callable[[bytes], bool] | None = None) -> None:
        """`options` default to config.toml's `[vad]`; options built by hand are checked the same way."""
        if options is None:
            from fdrl.config import load
            options = load().vad
        options.check()
        self.options = options
        if sample_rate not in VAD_SAMPLE_RATES:
            raise UserError(f"VAD sample rate must be one of {VAD_SAMPLE_RATES}, got {sample_rate} (resample first)")
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * options.frame_ms // 1000
        self._is_speech = is_speech or webrtc_is_speech(options.aggressiveness, sample_rate)

        frames = options.frames
        self._window = max(1, frames(options.preroll_ms))
        self._needed = max(1, math.ceil(options.speech_ratio * self._window - 1e-9))
        self._preroll = frames(options.preroll_ms)
        self._hangover = frames(options.hangover_ms)
        self._tail = min(frames(options.tail_ms), self._hangover)
        self._after = min(frames(options.asr_tail_ms), self._hangover - self._tail)
        # A pause is only news before the hangover ends: early_ms >= hangover_ms means no pauses.
        early = frames(options.early_ms)
        self._early = early if early < self._hangover else 0
        self._min_voiced = frames(options.min_utterance_ms)
        self._max_frames = options.max_utterance_ms // options.frame_ms

        self.discarded = 0
        self._pending = np.zeros(0, np.float32)  # samples not yet making a whole frame
        self._next_index = 0                       # index of the next frame to decide
        self._history: deque[_Frame] = deque(maxlen=self._window + self._preroll)
        self._segment: list[_Frame] | None = None  # frames of the open segment, None when idle
        self._first_voiced = 0
        self._last_voiced = 0
        self._paused = False                       # this silence has yielded its SegmentPause

    @property
    def speaking(self) -> bool:
        """True while a segment is open."""
        return self._segment is not None

    level_db = staticmethod(level_db)

    def feed(self, audio: np.ndarray) -> Iterator[SegmentEvent]:
        """Consume mono float32 samples (any length); returns the events they complete.

        The work is done before returning (the iterator is over a finished list), so the state
        advances even if the caller ignores the events.
        """
        return iter(list(self._feed(audio)))

    def flush(self) -> Iterator[SegmentEvent]:
        """End of stream: close the open segment, if any (samples short of a whole frame are ignored)."""
        events = [self._close(self._next_index)] if self._segment is not None else []
        self._history.clear()
        return iter(events)

    # -- state machine ---------------------------------------------------------------------------

    def _feed(self, audio: np.ndarray) -> Iterator[SegmentEvent]:
        audio = np.array(audio, dtype=np.float32)  # a copy: callers (sounddevice) reuse their buffers
        if audio.ndim != 1:
            raise ValueError(f"Segmenter.feed expects mono 1-D audio, got shape {audio.shape}")
        buf = np.concatenate([self._pending, audio]) if self._pending.size else audio
        n = self.frame_samples
        whole = len(buf) // n * n
        self._pending = buf[whole:].copy()
        for offset in range(0, whole, n):
            frame = buf[offset:offset + n]
            voiced = bool(self._is_speech(to_int16(frame)))
            yield from self._step(_Frame(self._next_index, frame, voiced))
            self._next_index += 1

    def _time(self, frame_index: int) -> float:
        return frame_index * self.frame_samples / self.sample_rate

    def _step(self, frame: _Frame) -> Iterator[SegmentEvent]:
        if self._segment is None:
            self._history.append(frame)
            window = list(self._history)[-self._window:]
            if frame.voiced and sum(f.voiced for f in window) >= self._needed:
                onset = next(f.index for f in window if f.voiced)
                first = max(onset - self._preroll, self._history[0].index)
                self._segment = [f for f in self._history if f.index >= first]
                self._history.clear()
                self._first_voiced, self._last_voiced = onset, frame.index
                yield SegmentStart(self._time(first))
            return

        self._segment.append(frame)
        if frame.voiced:
            self._last_voiced = frame.index
            self._paused = False
        silence = frame.index - self._last_voiced
        if silence >= self._hangover:
            yield self._close(frame.index + 1)
        elif len(self._segment) >= self._max_frames:
            start = self._segment[0].index
            yield Segment(self._time(start), self._time(frame.index + 1), self._audio(self._segment), True)
            # Speech runs on across the cut: the continuation counts as voiced from its first frame.
            self._segment = []
            self._first_voiced = frame.index + 1
            yield SegmentStart(self._time(frame.index + 1))
        elif self._early and silence >= self._early and not self._paused and self._long_enough():
            self._paused = True
            start, end, kept, after = self._cut(frame.index + 1)
            yield SegmentPause(self._time(start), self._time(end), self._audio(kept), self._audio(after))

    def _long_enough(self) -> bool:
        return self._last_voiced + 1 - self._first_voiced >= self._min_voiced

    def _cut(self, stop: int) -> tuple[int, int, list[_Frame], list[_Frame]]:
        """(start, end, frames, frames after) the open segment holds if it closes given frames up to
        `stop` (exclusive)."""
        assert self._segment is not None
        start = self._segment[0].index if self._segment else self._first_voiced
        end = max(start, min(self._last_voiced + 1 + self._tail, stop))
        return (start, end, [f for f in self._segment if f.index < end],
                [f for f in self._segment if end <= f.index < end + self._after])

    def _close(self, stop: int) -> SegmentEvent:
        """Close the open segment given frames up to `stop` (exclusive) were seen; back to idle."""
        assert self._segment is not None
        start, end, kept, after = self._cut(stop)
        # Frames past the tail are silence; they stay in history as pre-roll for the next segment.
        self._history.extend(f for f in self._segment if f.index >= end)
        self._segment = None
        if not self._long_enough():
            self.discarded += 1
            return SegmentDiscarded(self._time(start), self._time(end))
        return Segment(self._time(start), self._time(end), self._audio(kept), False, self._audio(after))

    def _audio(self, frames: list[_Frame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([f.audio for f in frames]).astype(np.float32, copy=False)
