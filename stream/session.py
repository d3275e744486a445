"""One session from end to end: a source through the recognizer to a view, JSONL, recording and plot.

This is what `fdrl live` and `fdrl replay` run; library users who want only events call
`Recognizer.run` directly.

Stopping is graceful however it comes (a `stop` event the caller sets, SIGINT/SIGTERM through
`stop_on_signals`, or cancelling the task): the source is closed at once, then the pipeline gets
`SessionOptions.drain_s` to finish what it holds, the segment being spoken included (the VAD closes
it at the end of the source). So every closed segment still ends as one utterance or one error, the
final Stats says so, and the files are closed with it. Only a drain that runs out of time is cut.
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, Callable, Iterator, TypeVar

from rich.console import Console

from fdrl.config import Config
from stream.events import Event, Stats, Utterance
from stream.pipeline import Recognizer
from stream.record import JsonlWriter, SessionRecorder
from stream.sources import AudioChunk, VideoFrame
from stream.ui import pick_view

T = TypeVar("T")

# Time the pipeline gets after a stop to label the segments it holds. One segment takes ~0.3 s of
# compute live; this leaves room for two or three and still exits well inside 2 s.
DRAIN_S = 1.5


@dataclass
class SessionOptions:
    live: bool = False
    jsonl: Path | None = None
    record: Path | None = None
    plot: Path | None = None
    checkpoint: Path | None = None
    face: bool = True
    drain_s: float = DRAIN_S  # after a stop: how long the pipeline may take to finish its segments


class Merged:
    """What `merge` returns: the merged items, plus the sum of the sources' drop counters
    (`dropped_s`, `dropped`, `overflows`), which the pipeline's Stats report."""

    def __init__(self, sources: tuple[AsyncIterable, ...]) -> None:
        self.sources = sources
        self._items = _merged(*sources)

    def __aiter__(self) -> Merged:
        return self

    def __anext__(self):
        return self._items.__anext__()

    def aclose(self):
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


def merge(*sources: AsyncIterable) -> Merged:
    """Items of several sources (e.g. microphone and camera) as they arrive; an error in one ends all."""
    return Merged(sources)


async def _merged(*sources: AsyncIterable) -> AsyncIterator:
    queue: asyncio.Queue = asyncio.Queue(maxsize=8)
    done = object()

    async def pump(src: AsyncIterable) -> None:
        # No `finally` for the end marker: a cancelled pump must not wait on a full queue nobody reads.
        items = aiter(src)
        try:
            async for item in items:
                await queue.put(item)
        except Exception:
            await queue.put(done)
            raise
        finally:
            await _aclose(items)
        await queue.put(done)

    tasks = [asyncio.create_task(pump(s)) for s in sources]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
                for t in tasks:  # a source that failed ends the session with its error
                    if t.done() and not t.cancelled() and t.exception() is not None:
                        raise t.exception()
                continue
            yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until_stopped(source: AsyncIterable[T], stop: asyncio.Event) -> AsyncIterator[T]:
    """`source`'s items until it ends or `stop` is set; then it is closed, so its device or decoder stops now.

    A stop also ends the wait for the next item: a device that went quiet cannot hold up a shutdown.
    """
    items = aiter(source)
    stopped = asyncio.ensure_future(stop.wait())
    step: asyncio.Future | None = None
    try:
        while not stop.is_set():
            step = asyncio.ensure_future(_next(items))
            await asyncio.wait({step, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                return
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        stopped.cancel()
        if step is not None and not step.done():  # the source handles the cancellation: stops its thread
            step.cancel()
            await asyncio.wait({step})
        await _aclose(items)


async def _next(items: AsyncIterator[T]) -> T:
    return await anext(items)


async def recorded(source: AsyncIterable, recorder: SessionRecorder) -> AsyncIterator:
    """Pass items through, writing audio and video to the recording on the way (frames off the loop)."""
    items = aiter(source)
    try:
        async for item in items:
            if isinstance(item, AudioChunk):
                recorder.write_audio(item.t, item.samples)
            elif isinstance(item, VideoFrame):
                await asyncio.to_thread(recorder.write_frame, item.t, item.image)
            yield item
    finally:
        await _aclose(items)


async def _aclose(items: AsyncIterator) -> None:
    """Close an async iterator that can be closed, so its threads and devices stop now, not when collected."""
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, on_signal: Callable[[int], None] | None = None,
                    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[list[int]]:
    """Within the block, the first SIGINT or SIGTERM sets `stop`; the list it yields gets that signal's number.

    After the first signal the handlers revert to the system default, so a second one ends the
    process at once (a recording is valid at every moment: it is cut, not corrupted). `on_signal`
    is called with the first signal's number too. The previous handlers come back on leaving.
    Enter it on the running loop's thread (the main thread: asyncio signal handlers live there).
    """
    loop = asyncio.get_running_loop()
    previous = {s: signal.getsignal(s) for s in signals}
    received: list[int] = []

    def first(signum: int) -> None:
        received.append(signum)
        for s in signals:
            loop.remove_signal_handler(s)
            signal.signal(s, signal.SIG_DFL)
        stop.set()
        if on_signal is not None:
            on_signal(signum)

    for s in signals:
        loop.add_signal_handler(s, first, s)
    try:
        yield received
    finally:
        for s in signals:
            loop.remove_signal_handler(s)
            if previous[s] is not None:  # None: set outside Python, cannot be restored from here
                signal.signal(s, previous[s])


async def run_session(cfg: Config, source: AsyncIterable, options: SessionOptions,
                      console: Console | None = None, stop: asyncio.Event | None = None) -> Stats | None:
    """Run until `source` ends or `stop` is set; returns the final Stats. Files are closed whatever happens.

    A stop (or cancelling the task) drains the pipeline as the module docstring says; a cancelled
    session re-raises CancelledError once drained. None means the drain ran out of time, so no final
    Stats was made (the JSONL and recording end with the last events that were).
    """
    stop = stop if stop is not None else asyncio.Event()
    work = asyncio.create_task(_session(cfg, until_stopped(source, stop), options, console or Console(), counters=source))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        try:
            # `wait` does not pass a cancellation on to `work`: it is drained below instead of killed.
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            stop.set()
            await _drain(work, options.drain_s)
            raise
        await _drain(work, options.drain_s)
    finally:
        stopped.cancel()
        if not work.done():  # cancelled again while draining: stop at once
            work.cancel()
        elif not work.cancelled():
            work.exception()  # retrieved here, raised below (or superseded by the cancellation)
    return None if work.cancelled() else work.result()


async def _drain(work: asyncio.Task, seconds: float) -> None:
    """Give a stopped session `seconds` to finish, then cut it; either way wait until it has ended."""
    await asyncio.wait({work}, timeout=seconds)
    if not work.done():
        work.cancel()
        await asyncio.wait({work})


class _Outputs:
    """The session's files: JSONL, recording and timeline plot. `close()` is idempotent and never awaits."""

    def __init__(self, cfg: Config, options: SessionOptions) -> None:
        self.recorder = SessionRecorder(options.record, config=cfg.to_dict()) if options.record else None
        try:
            self.jsonl = JsonlWriter(options.jsonl) if options.jsonl else None
        except BaseException:
            if self.recorder:
                self.recorder.close()
            raise
        self.plot = options.plot
        if self.plot is not None:  # imported now: matplotlib takes a while, and a stopping session has 2 s
            from stream.plot import plot_timeline
            self._plot_timeline = plot_timeline
        self.utterances: list[Utterance] = []
        self.stats: Stats | None = None  # the latest Stats event
        self._closed = False

    def write(self, event: Event) -> None:
        if self.jsonl:
            self.jsonl.write(event)
        if self.recorder:
            self.recorder.write_event(event)
        if isinstance(event, Utterance) and event.final:
            self.utterances.append(event)
        elif isinstance(event, Stats):
            self.stats = event

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.jsonl:
                self.jsonl.close()
        finally:
            if self.recorder:
                self.recorder.close()
        if self.plot is not None:
            self._plot_timeline(self.utterances, self.plot)


async def _session(cfg: Config, source: AsyncIterable, options: SessionOptions, console: Console,
                   counters: object | None = None) -> Stats | None:
    """The session proper: the final Stats, or None when cancelled before the pipeline made it.
    `counters` is the device source under the wrappers, whose drop counters Stats report."""
    outputs = _Outputs(cfg, options)
    finished = False
    try:
        async with Recognizer(cfg, options.checkpoint, face=options.face) as recognizer:
            if outputs.recorder:
                source = recorded(source, outputs.recorder)
            view = pick_view(console, cfg.ui.refresh_hz, recognizer.device)

            async def tee() -> AsyncIterator[Event]:
                nonlocal finished
                async for event in recognizer.run(source, live=options.live, counters=counters):
                    outputs.write(event)
                    yield event
                finished = True  # the run's last event was its final Stats

            try:
                await view(tee())
            finally:
                # Before the recognizer exits: that may wait for a compute batch already running.
                outputs.close()
    finally:
        outputs.close()
    return outputs.stats if finished else None
