"""One session from end to end: a source through the recognizer to a view, JSONL, recording and plot.

This is what `fdrl live` and `fdrl replay` run; library users who want only events call
`Recognizer.run` directly.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterable, AsyncIterator

from rich.console import Console

from fdrl.config import Config
from stream.events import Event, Stats, Utterance
from stream.pipeline import Recognizer
from stream.record import JsonlWriter, SessionRecorder
from stream.sources import AudioChunk, VideoFrame
from stream.ui import pick_view


@dataclass
class SessionOptions:
    live: bool = False
    jsonl: Path | None = None
    record: Path | None = None
    plot: Path | None = None
    checkpoint: Path | None = None
    face: bool = True


async def merge(*sources: AsyncIterable) -> AsyncIterator:
    """Items of several sources (e.g. microphone and camera) as they arrive; an error in one ends all."""
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


async def run_session(cfg: Config, source: AsyncIterable, options: SessionOptions,
                      console: Console | None = None) -> Stats | None:
    """Run to the end of `source` (or cancellation); returns the final Stats. Files are closed whatever happens."""
    console = console or Console()
    recorder = SessionRecorder(options.record, config=cfg.to_dict()) if options.record else None
    jsonl = JsonlWriter(options.jsonl) if options.jsonl else None
    utterances: list[Utterance] = []
    last_stats: list[Stats] = []
    try:
        async with Recognizer(cfg, options.checkpoint, face=options.face) as recognizer:
            if recorder:
                source = recorded(source, recorder)
            view = pick_view(console, cfg.ui.refresh_hz, recognizer.device)

            async def tee() -> AsyncIterator[Event]:
                async for event in recognizer.run(source, live=options.live):
                    if jsonl:
                        jsonl.write(event)
                    if recorder:
                        recorder.write_event(event)
                    if isinstance(event, Utterance) and event.final:
                        utterances.append(event)
                    if isinstance(event, Stats):
                        last_stats[:] = [event]
                    yield event

            await view(tee())
    finally:
        if jsonl:
            jsonl.close()
        if recorder:
            recorder.close()
        if options.plot is not None:
            from stream.plot import plot_timeline
            plot_timeline(utterances, options.plot)
    return last_stats[0] if last_stats else None
