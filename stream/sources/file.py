"""Audio and video from media files (PyAV), interleaved in time order, as fast as they are read or in real time.

Audio is decoded by `fdrl.audio.iter_audio` (the project's one decoder, so training and replay hear
the same samples) and re-cut to fixed chunks timed by sample count; video times come from container
timestamps. A file therefore gives the same items on every run. Decoding runs on its own thread,
at most `queue_size` items ahead of the consumer (`bridge.py`: nothing is dropped, the decoder waits).
"""
from __future__ import annotations

import asyncio
import heapq
import math
import threading
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import aclosing, closing
from pathlib import Path
from typing import Literal

import av
import numpy as np

from fdrl.audio import CONVERT_HINT, SAMPLE_RATE, check_input_file, iter_audio, no_samples
from fdrl.errors import UserError
from fdrl.video import read_frames
from stream.sources.bridge import Bridge, on_thread
from stream.sources.items import AudioChunk, SourceItem, VideoFrame


def _probe(path: Path) -> tuple[bool, bool]:
    """(has audio, has video) for a media file; UserError if it is missing, not media, or its only track is unusable."""
    check_input_file(path, "media file")
    try:
        with av.open(str(path)) as container:
            audio = [s for s in container.streams.audio if _decodable(s)]
            if container.streams.audio and not audio and not container.streams.video:
                raise UserError(f"audio in {path} is corrupt, empty or in an unknown codec "
                                f"({_describe(container.streams.audio[0])}; {CONVERT_HINT})")
            return bool(audio), bool(container.streams.video)
    except (av.error.FFmpegError, OSError) as e:
        raise UserError(f"cannot read {path}: {e} (is it an audio or video file?)") from None


def _decodable(stream: av.audio.stream.AudioStream) -> bool:
    """FFmpeg also lists audio it cannot decode: an unknown codec (no codec context), or an empty
    or damaged header (0 Hz, 0 channels, as an empty .flac opens). Such a stream yields no samples."""
    ctx = stream.codec_context
    return ctx is not None and ctx.sample_rate > 0 and ctx.channels > 0


def _describe(stream: av.audio.stream.AudioStream) -> str:
    ctx = stream.codec_context
    return "no decoder for it" if ctx is None else f"{ctx.sample_rate} Hz, {ctx.channels} channels"


def decode_audio_chunks(path: Path, chunk_samples: int, stop: threading.Event | None = None) -> Iterator[AudioChunk]:
    """Stream `path`'s first audio track as 16 kHz mono chunks of `chunk_samples` (the last may be shorter).

    `fdrl.audio.iter_audio` re-cut to fixed chunks timed by sample count: an hour-long recording
    starts at once and uses constant memory, and fails the way `decode_audio` does.
    """
    pending: list[np.ndarray] = []
    buffered = emitted = 0
    for block in iter_audio(path):
        if stop is not None and stop.is_set():
            return
        pending.append(block)
        buffered += block.size
        if buffered >= chunk_samples:
            buf = np.concatenate(pending)
            whole = buffered // chunk_samples * chunk_samples
            for k in range(0, whole, chunk_samples):
                yield AudioChunk((emitted + k) / SAMPLE_RATE, buf[k:k + chunk_samples].copy())
            pending, buffered, emitted = [buf[whole:]], buffered - whole, emitted + whole
    if buffered:
        yield AudioChunk(emitted / SAMPLE_RATE, np.concatenate(pending))
    elif not emitted:
        raise no_samples(path)


def _video_frames(path: Path, rate_hz: float) -> Iterator[VideoFrame]:
    """`fdrl.video.read_frames` as VideoFrames (closing this closes the container too)."""
    with closing(read_frames(path, rate_hz)) as frames:
        for t, image in frames:
            yield VideoFrame(t, image)


class FileSource:
    """Audio and/or video from files, interleaved in time order.

    `pace="fast"` yields as fast as the consumer takes (deterministic: tests, batch runs);
    `pace="realtime"` holds each item until `t` seconds after the first, like a live source.
    Audio comes from `audio_path` when it has an audio track, frames from `video_path` when given;
    the two may be the same file. Missing files, or no usable track at all, raise UserError here.
    """

    def __init__(self, audio_path: str | Path | None, video_path: str | Path | None = None,
                 pace: Literal["fast", "realtime"] = "fast", chunk_ms: int = 100,
                 video_fps_limit: float | None = None, queue_size: int = 32) -> None:
        if pace not in ("fast", "realtime"):
            raise UserError(f"pace must be 'fast' or 'realtime', got {pace!r}")
        if chunk_ms <= 0:
            raise UserError(f"chunk_ms must be positive, got {chunk_ms}")
        self.audio_path = Path(audio_path) if audio_path is not None else None
        self.video_path = Path(video_path) if video_path is not None else None
        self.pace = pace
        self.chunk_samples = SAMPLE_RATE * chunk_ms // 1000
        self.video_fps_limit = video_fps_limit
        self.queue_size = queue_size
        self.has_audio = self.audio_path is not None and _probe(self.audio_path)[0]
        self.has_video = self.video_path is not None and _probe(self.video_path)[1]
        if not (self.has_audio or self.has_video):
            named = ", ".join(str(p) for p in (self.audio_path, self.video_path) if p is not None) or "no file"
            raise UserError(f"no audio or video track could be decoded from {named} (pass a media file with sound or pictures)")

    def _items(self, stop: threading.Event) -> Generator[SourceItem, None, None]:
        """Blocking: both tracks decoded lazily and merged by time (runs on the decoder thread)."""
        streams: list[Iterator[SourceItem]] = []
        if self.has_audio:
            assert self.audio_path is not None
            streams.append(decode_audio_chunks(self.audio_path, self.chunk_samples, stop))
        if self.has_video:
            assert self.video_path is not None
            streams.append(_video_frames(self.video_path, self.video_fps_limit or math.inf))
        try:
            yield from heapq.merge(*streams, key=lambda item: item.t)
        finally:
            for s in streams:  # closes the containers now, on this thread
                s.close()  # type: ignore[attr-defined]

    async def _paced(self) -> AsyncIterator[SourceItem]:
        loop = asyncio.get_running_loop()
        start: float | None = None
        async with aclosing(on_thread(self._items, Bridge(self.queue_size, when_full="wait"),
                                      name="fdrl-file-decoder")) as items:
            async for item in items:
                if self.pace == "realtime":
                    now = loop.time()
                    start = now if start is None else start  # the wall time of t = 0
                    delay = start + item.t - now
                    if delay > 0:
                        await asyncio.sleep(delay)
                yield item

    def __aiter__(self) -> AsyncIterator[SourceItem]:
        return self._paced()
