"""Several async sources as one: items as they arrive, an error in any ends all, drop counters summed.

`fdrl live` merges the microphone with the camera, and `ChunkSource` merges the caller's audio with
their frames, through this one function.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any


def merge(*sources: AsyncIterable[Any], maxsize: int = 8) -> Merged:
    """Items of several sources (e.g. microphone and camera) as they arrive; an error in one ends all.

    Each source keeps its own order. At most `maxsize` items wait for the consumer, so a consumer
    that stops reading holds the sources back. Closing the result closes every source.
    """
    return Merged(sources, maxsize)


class Merged:
    """What `merge` returns: the merged items, plus the sum of the sources' drop counters
    (`dropped_s`, `dropped`, `overflows`), which the pipeline's Stats report."""

    def __init__(self, sources: tuple[AsyncIterable[Any], ...], maxsize: int = 8) -> None:
        self.sources = sources
        self._items = _merged(sources, maxsize)

    def __aiter__(self) -> Merged:
        return self

    def __anext__(self) -> Any:
        return self._items.__anext__()

    def aclose(self) -> Any:
        return self._items.aclose()

    def _sum(self, name: str) -> float:
        return sum(getattr(s, name, 0) for s in self.sources)

    @property
    def dropped_s(self) -> float:
        return float(self._sum("dropped_s"))

    @property
    def dropped(self) -> int:
        return int(self._sum("dropped"))

    @property
    def overflows(self) -> int:
        return int(self._sum("overflows"))


@dataclass(frozen=True)
class _End:
    """A source's last word in the queue: it ended, with `error` if it failed."""

    error: Exception | None


async def _merged(sources: tuple[AsyncIterable[Any], ...], maxsize: int) -> AsyncIterator[Any]:
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    async def pump(source: AsyncIterable[Any]) -> None:
        items = aiter(source)
        error: Exception | None = None
        try:
            async for item in items:
                await queue.put(item)
        except Exception as e:  # handed to the consumer, which re-raises it
            error = e
        finally:
            await aclose(items)
        # Not in `finally`: a cancelled pump must not wait on a full queue nobody reads.
        await queue.put(_End(error))

    tasks = [asyncio.create_task(pump(s)) for s in sources]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if not isinstance(item, _End):
                yield item
            elif item.error is not None:  # a source that failed ends the merge with its error
                raise item.error
            else:
                running -= 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def aclose(items: AsyncIterator[Any]) -> None:
    """Close an async iterator that can be closed, so its threads and devices stop now, not when collected."""
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()
