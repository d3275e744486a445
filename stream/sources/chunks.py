"""Bring your own source: the caller's audio blocks and/or frames, in the shape every source yields."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, TypeVar

import numpy as np

from fdrl.audio import SAMPLE_RATE
from fdrl.errors import UserError
from stream.sources.items import ChunkClock, SourceItem, SourceLost, VideoFrame
from stream.sources.merge import merge

T = TypeVar("T")


class ChunkSource:
    """The caller's audio blocks and/or frames as a source.

    `audio` yields numpy blocks at `sample_rate`, mono (frames,) or (frames, channels), of any
    length; they become 16 kHz mono `AudioChunk`s timed by sample count. `video` yields
    `VideoFrame`s, `(t, image)` pairs, or bare BGR images (timed on arrival, in monotonic seconds
    since iteration started), and may end with a `SourceLost` to say the camera went away. Either
    iterator may be sync or async; items come out in the order the two produce them (`merge`), at
    most `queue_size` ahead of the consumer.
    """

    def __init__(self, audio: AsyncIterable[np.ndarray] | Iterable[np.ndarray] | None = None,
                 sample_rate: int = SAMPLE_RATE,
                 video: AsyncIterable[Any] | Iterable[Any] | None = None, queue_size: int = 8) -> None:
        if audio is None and video is None:
            raise UserError("ChunkSource needs an audio or a video iterator")
        self.audio, self.video, self.sample_rate, self.queue_size = audio, video, sample_rate, queue_size

    async def _chunks(self, blocks: AsyncIterable[np.ndarray] | Iterable[np.ndarray]) -> AsyncIterator[SourceItem]:
        clock = ChunkClock(self.sample_rate)
        async for block in _as_async(blocks):
            chunk = clock(block)
            if chunk is not None:
                yield chunk
        last = clock.flush()
        if last is not None:
            yield last

    @staticmethod
    async def _frames(frames: AsyncIterable[Any] | Iterable[Any], epoch: float) -> AsyncIterator[SourceItem]:
        async for frame in _as_async(frames):
            if isinstance(frame, (VideoFrame, SourceLost)):
                yield frame
            elif isinstance(frame, tuple):
                yield VideoFrame(float(frame[0]), frame[1])
            else:
                yield VideoFrame(time.monotonic() - epoch, frame)

    def __aiter__(self) -> AsyncIterator[SourceItem]:
        streams: list[AsyncIterator[SourceItem]] = []
        if self.audio is not None:
            streams.append(self._chunks(self.audio))
        if self.video is not None:
            streams.append(self._frames(self.video, epoch=time.monotonic()))
        return merge(*streams, maxsize=self.queue_size)


async def _as_async(items: AsyncIterable[T] | Iterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
            await asyncio.sleep(0)  # a sync iterator never waits: let the other stream and the consumer run
