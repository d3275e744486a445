"""One session from end to end: a source through the recognizer to a view, JSONL, recording and plot.

This is what `fdrl live` and `fdrl replay` run; library users who want only events call
`Recognizer.run` directly.

Stopping is graceful however it comes (a `stop` event the caller sets, SIGINT/SIGTERM through
`stop_on_signals`, or cancelling the task): the source is closed at once, then the pipeline gets
`SessionOptions.drain_s` to finish what it holds, the segment being spoken included (the VAD closes
it at the end of the source). So every closed segment still ends as one utterance or one error, the
final Stats says so, and the files are closed with it. Only a drain that runs out of time is cut.

The output paths are checked before the models load (fdrl.outputs.check_outputs): none may be one
of the session's inputs, the recording folder must be new or empty, and each must be writable.
An output that fails while the session runs (a disk that fills up) costs only that output: it is
closed with what it holds still valid, one `Error` event says so, and the labels go on to the
final Stats.
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, Callable, Iterator, TypeVar

from rich.console import Console

from fdrl.checkpoint import files as checkpoint_files
from fdrl.config import Config
from fdrl.outputs import check_outputs, config_inputs
from stream.events import Error, Event, Stats, Utterance
from stream.pipeline import Recognizer
from stream.record import SESSION_FILES, JsonlWriter, RecordingError, SessionRecorder
from stream.sources import AudioChunk, VideoFrame, aclose
from stream.ui import pick_view

T = TypeVar("T")

# Time the pipeline gets after a stop to label the segments it holds: room for a few segments'
# compute (see the README's latency figures) while the process still exits inside its 2 s.
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
    inputs: tuple[Path, ...] = ()  # what the session reads (besides the checkpoint and models): never an output


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
        await aclose(items)


async def _next(items: AsyncIterator[T]) -> T:
    return await anext(items)


async def recorded(source: AsyncIterable, outputs: _Outputs) -> AsyncIterator:
    """Pass items through, writing audio and video to the recording on the way (frames off the loop)."""
    items = aiter(source)
    try:
        async for item in items:
            if isinstance(item, AudioChunk):
                outputs.record(item)
            elif isinstance(item, VideoFrame):
                await asyncio.to_thread(outputs.record, item)
            yield item
    finally:
        await aclose(items)


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
    work = asyncio.create_task(_recognize_and_write(cfg, until_stopped(source, stop), options, console or Console(), counters=source))
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
    """The session's files: JSONL, recording and timeline plot. `close()` is idempotent and never awaits.

    An output whose write fails is dropped (its file stays valid up to the failure) and reported
    once, as an Error event that `write` returns after the event being written; the others go on.
    """

    def __init__(self, cfg: Config, options: SessionOptions) -> None:
        check_outputs({"--jsonl": options.jsonl, "--plot": options.plot, "--record": options.record},
                      [*options.inputs, *checkpoint_files(options.checkpoint or cfg.resolve(cfg.paths.checkpoint)),
                       *config_inputs(cfg)],
                      folders={"--record": SESSION_FILES}, streams={"--jsonl"})
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
        self._lock = threading.Lock()  # video frames are recorded from a worker thread
        self._notices: list[Error] = []  # failures not yet passed on as events
        self._stream = "0"               # stream name of the latest event, for a failure's Error event

    def record(self, item: AudioChunk | VideoFrame) -> None:
        """Add a chunk or a frame to the recording, while there is one."""
        recorder = self.recorder
        if recorder is None:
            return
        try:
            if isinstance(item, AudioChunk):
                recorder.write_audio(item.t, item.samples)
            else:
                recorder.write_frame(item.t, item.image)
        except RecordingError as e:
            self._lost("recorder", "recording", e, item.t)

    def write(self, event: Event) -> list[Event]:
        """Write `event` to every output; returns it, followed by an Error for each output lost since the last call."""
        self._stream = getattr(event, "stream", self._stream)
        self._write(event)
        with self._lock:
            notices, self._notices = self._notices, []
        for notice in notices:
            self._write(notice)
        return [event, *notices]

    def _write(self, event: Event) -> None:
        if self.jsonl:
            try:
                self.jsonl.write(event)
            except RecordingError as e:
                self._lost("jsonl", "--jsonl", e, _time_of(event))
        if self.recorder:
            try:
                self.recorder.write_event(event)
            except RecordingError as e:
                self._lost("recorder", "recording", e, _time_of(event))
        if isinstance(event, Utterance) and event.final:
            self.utterances.append(event)
        elif isinstance(event, Stats):
            self.stats = event

    def _lost(self, attribute: str, what: str, error: RecordingError, t: float) -> None:
        """Drop the output that failed (it closed itself, keeping what it holds valid) and queue one Error."""
        with self._lock:
            if getattr(self, attribute) is None:
                return  # already reported: another thread met the same failure
            setattr(self, attribute, None)
            self._notices.append(Error(self._stream, t, f"{what} stopped, the session goes on: {error}", "output"))

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


def _time_of(event: Event) -> float:
    """The stream time an event stands at (its end for a span), to place an Error next to it."""
    for name in ("time", "end", "start"):
        t = getattr(event, name, None)
        if isinstance(t, (int, float)):
            return float(t)
    return 0.0


async def _recognize_and_write(cfg: Config, source: AsyncIterable, options: SessionOptions, console: Console,
                   counters: object | None = None) -> Stats | None:
    """The session proper: the final Stats, or None when cancelled before the pipeline made it.
    `counters` is the device source under the wrappers, whose drop counters Stats report."""
    outputs = _Outputs(cfg, options)
    finished = False
    try:
        async with Recognizer(cfg, options.checkpoint, face=options.face) as recognizer:
            if outputs.recorder:
                source = recorded(source, outputs)
            view = pick_view(console, cfg.ui.refresh_hz, recognizer.device)

            async def tee() -> AsyncIterator[Event]:
                nonlocal finished
                async for event in recognizer.run(source, live=options.live, counters=counters):
                    for passed in outputs.write(event):
                        yield passed
                finished = True  # the run's last event was its final Stats

            try:
                await view(tee())
            finally:
                # Before the recognizer exits: that may wait for a compute batch already running.
                outputs.close()
    finally:
        outputs.close()
    return outputs.stats if finished else None
