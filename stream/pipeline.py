"""The streaming recognizer: small async stages joined by bounded queues.

    source ──▶ demux ─┬─▶ audio_q ─▶ vad ──▶ jobs ─▶ emit ──▶ events
                      └─▶ video_q ─▶ face ─┘ (face features over each utterance's span)

Blocking work runs off the event loop: decoding and capture in the sources' threads, Whisper and
FDRL on the shared `InferenceWorker` thread, face analysis on a face thread. Every queue is
bounded, so a slow consumer slows the source (replay) instead of growing memory; live sources drop
instead (oldest video frames first, audio counted). Cancelling the consumer cancels every stage.

Faults end one item, not the stream: a segment whose inference fails becomes an `Error` event; a
GPU that runs out of memory or a camera that stops becomes a `Fallback` event and the stream goes
on without it. Audio a live source dropped is counted and stands in as silence, so stream times
stay true (and match the recording, which fills the same gaps with silence).

Usage:

    async with Recognizer(cfg) as recognizer:
        async for event in recognizer.run(FileSource("talk.wav")):
            print(event)
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterable, AsyncIterator

import numpy as np

from fdrl.audio import SAMPLE_RATE
from fdrl.calibration import shown_label
from fdrl.config import Config
from fdrl.inputs import face_input
from fdrl.labels import CANONICAL
from fdrl.speaker import RunningSpeaker
from fdrl.vad import Segment, SegmentDiscarded, SegmentPause, Segmenter, SegmentStart, level_db
from stream.events import Error, Event, FaceUpdate, Fallback, Level, SpeechDiscarded, SpeechStarted, Stats, Utterance
from stream.inference import Engine, InferenceWorker, Request, Result
from stream.sources import AudioChunk, SourceLost, VideoFrame

_END = object()  # end-of-stream marker on the internal queues
LEVEL_EVERY_S = 0.1
STATS_EVERY_S = 2.0
GAP_SAMPLES = SAMPLE_RATE // 1000  # audio chunks further apart than this (1 ms) lost audio in between
EPSILON_S = 1e-6                   # rate limits compare times with this slack: 0.6 + 0.2 > 0.8 in floats


@dataclass
class Counters:
    """Per-stream accounting: every closed segment ends as an utterance, an error or a no-speech reject."""

    segments_closed: int = 0
    utterances: int = 0
    errors: int = 0
    no_speech: int = 0
    discarded: int = 0                     # opened by the VAD, then too short to close as a segment
    frames_dropped: int = 0
    audio_gaps_s: float = 0.0              # audio missing between chunks: dropped before it reached us
    audio_s: float = 0.0
    compute_s: float = 0.0


@dataclass
class FaceTrack:
    """Face results of one stream in time order, and how far the face stage has got (its watermark)."""

    times: list[float] = field(default_factory=list)
    results: list = field(default_factory=list)
    watermark: float = -math.inf
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, t: float, result) -> None:
        self.times.append(t)
        self.results.append(result)
        self.advance(t)

    def advance(self, t: float) -> None:
        self.watermark = max(self.watermark, t)
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_until(self, t: float) -> None:
        while self.watermark < t:
            await self.changed.wait()

    def span(self, start: float, end: float) -> list:
        lo, hi = bisect.bisect_left(self.times, start), bisect.bisect_right(self.times, end)
        return [r for r in self.results[lo:hi] if r is not None]

    def forget_before(self, t: float) -> None:
        """Drop results older than `t`, which no segment will ask for: a long session keeps only recent faces."""
        k = bisect.bisect_left(self.times, t)
        if k:
            del self.times[:k], self.results[:k]


@dataclass
class _Job:
    index: int
    segment: Segment
    closed_at: float                       # perf_counter when the VAD closed it
    request: asyncio.Task                  # → Request, once face features are gathered and it is queued


class Recognizer:
    """Loads the models once; `run()` turns any number of concurrent sources into events."""

    def __init__(self, cfg: Config, checkpoint: Path | None = None, device: str | None = None, face: bool = True) -> None:
        self.cfg = cfg
        self._checkpoint = checkpoint
        self._device = device
        self._use_face = face
        self.engine: Engine | None = None
        self.worker: InferenceWorker | None = None
        self._face_model = None
        self._face_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fdrl-face")
        self._runs: set[_Run] = set()

    @property
    def device(self) -> str:
        return self.engine.device if self.engine else "not loaded"

    async def __aenter__(self) -> "Recognizer":
        self.engine = await asyncio.to_thread(Engine, self.cfg, self._checkpoint, self._device)
        if self._use_face:
            from fdrl.face import FaceAnalyzer
            self._face_model = await asyncio.to_thread(FaceAnalyzer.from_config, self.cfg, "cpu")
        self.worker = InferenceWorker(self.engine, self.cfg.runtime.max_batch, self.cfg.runtime.max_wait_ms)
        await self.worker.start()
        return self

    async def __aexit__(self, *exc) -> None:
        # A consumer that stopped iterating without closing its `run()` (a cancelled task leaves the
        # async generator suspended until it is collected) still has stages and a source running.
        for run in list(self._runs):
            await run.stop()
        if self.worker is not None:
            await self.worker.stop()
        self._face_executor.shutdown(wait=True, cancel_futures=True)

    async def run(self, source: AsyncIterable[AudioChunk | VideoFrame], stream: str = "0",
                  live: bool = False, counters: object | None = None) -> AsyncIterator[Event]:
        """Events for one source, in order. `live=True` measures end-of-speech latency against the wall clock
        and waits for no face results; replay (`live=False`) is deterministic. Stats report the drop
        counters (`dropped_s`, `dropped`, `overflows`) of `counters`, by default `source` itself: pass
        the device source when `source` wraps it."""
        if self.worker is None:
            raise RuntimeError("use `async with Recognizer(cfg) as r:` before r.run()")
        run = _Run(self, stream, live)
        self._runs.add(run)
        try:
            async with contextlib.aclosing(run.events(source, counters)) as events:
                async for event in events:
                    yield event
        finally:
            self._runs.discard(run)


class _Run:
    """The stages of one `Recognizer.run` call and their shared per-stream state."""

    def __init__(self, rec: Recognizer, stream: str, live: bool) -> None:
        self.rec, self.cfg, self.stream, self.live = rec, rec.cfg, stream, live
        self.counters = Counters()
        self.faces = FaceTrack()
        self.speaker = RunningSpeaker()    # speaker normalization: a stream is taken to be one speaker
        # Its final transcripts, the context of its next turns (`encoders.text_context_turns`; bounded).
        turns = self.cfg.encoders.text_context_turns
        self.history: collections.deque[str] | None = collections.deque(maxlen=turns) if turns else None
        self.out: asyncio.Queue = asyncio.Queue(maxsize=256)
        self.audio_q: asyncio.Queue = asyncio.Queue(maxsize=64)
        self.video_q: asyncio.Queue = asyncio.Queue(maxsize=8)
        self.jobs: asyncio.Queue = asyncio.Queue(maxsize=max(2, self.cfg.runtime.max_batch))
        self.wall0: float | None = None    # perf_counter at stream time 0 (live latency)
        self.stream_t = 0.0
        self.source_stats = None
        self.vad_options = self.cfg.vad
        self.vad_tail_s = self.vad_options.frames(self.vad_options.tail_ms) * self.vad_options.frame_ms / 1000
        # What the face track must keep: the segment being spoken (from `open_start`) and those closed
        # whose faces are not gathered yet (`gathering`, their starts) still ask for their faces.
        self.open_start: float | None = None
        self.gathering: list[float] = []
        self.faces_done = asyncio.Event()  # the face stage has labelled its last frame: the stream may end
        self.fallbacks_sent = 0            # how many of the engine's fallbacks this stream has announced
        self.items: AsyncIterator | None = None
        self.tasks: list[asyncio.Task] = []
        self.source_error: Exception | None = None  # the source failed: the run ends with it once drained
        self._stop_lock = asyncio.Lock()  # the consumer's close and the recognizer's exit may both stop a run

    async def events(self, source, counters: object | None = None) -> AsyncIterator[Event]:
        self.source_stats = source if counters is None else counters
        self.items = aiter(source)
        self.tasks = [asyncio.create_task(coro) for coro in (self.demux(self.items), self.vad(), self.face(), self.emit())]
        failure = asyncio.get_running_loop().create_future()  # the first stage to crash ends the run with its error
        for t in self.tasks:
            t.add_done_callback(lambda t: failure.done() or t.cancelled() or t.exception() is None
                                or failure.set_exception(t.exception()))
        try:
            while True:
                getter = asyncio.ensure_future(self.out.get())
                await asyncio.wait({getter, failure}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():  # a stage crashed and nothing is left to deliver
                    getter.cancel()
                    raise failure.exception()
                event = getter.result()
                if event is _END:
                    if self.source_error is not None:  # what the source gave is finished: now its error
                        raise self.source_error
                    break
                yield event
        finally:
            if failure.done() and not failure.cancelled():
                failure.exception()  # retrieved: no "exception was never retrieved" noise
            await self.stop()

    async def stop(self) -> None:
        """Cancel the stages and close the source (its threads stop now, not when it is collected). Idempotent."""
        async with self._stop_lock:
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            with contextlib.suppress(Exception):  # closed already, or not an async generator
                await self.items.aclose()  # type: ignore[union-attr]

    # -- stages ----------------------------------------------------------------------------------

    async def demux(self, items: AsyncIterator) -> None:
        # Replay holds each segment until the face stage has passed its end (see `submit`). Items come
        # in time order, so an audio chunk at `t` also says that no earlier frame is still to come:
        # the face stage is told, or audio without video would wait for frames that never come.
        watermarks = not self.live and self.rec._face_model is not None
        try:
            async for item in items:
                if isinstance(item, AudioChunk):
                    if self.wall0 is None:
                        self.wall0 = time.perf_counter() - item.t - item.duration
                    if watermarks:
                        await self.video_q.put(float(item.t))
                    await self.audio_q.put(item)
                elif isinstance(item, SourceLost):  # e.g. the camera stopped: the source goes on without it
                    await self.put(Fallback(self.stream, round(item.t, 3), item.message, item.source))
                elif self.rec._face_model is not None:
                    if self.live and self.video_q.full():  # live: the oldest frame goes first
                        self.video_q.get_nowait()
                        self.counters.frames_dropped += 1
                    await self.video_q.put(item)
        except Exception as e:
            # A source that fails ends the stream like one that ends: the segments read so far are
            # finished and delivered, then events() raises this at the end marker (deterministic,
            # where re-raising here would race the other stages to the end).
            self.source_error = e
        # No `finally`: when cancelled, the other stages are cancelled too, and waiting to put an
        # end marker into a full queue that nobody reads any more would hang the cancellation.
        await self.end_inputs()

    async def end_inputs(self) -> None:
        await self.audio_q.put(_END)
        await self.video_q.put(_END)

    async def vad(self) -> None:
        segmenter = Segmenter(self.vad_options)
        index = 0
        next_level = 0.0
        fed = 0  # samples fed to the segmenter: its clock, kept equal to stream time
        while (chunk := await self.audio_q.get()) is not _END:
            # Audio missing before this chunk is fed as silence, like the recording stores it.
            # Only gaps after the first chunk are drops; before it, the source started late.
            gap = round(chunk.t * SAMPLE_RATE) - fed
            events = []
            if gap > GAP_SAMPLES:
                if fed:
                    self.counters.audio_gaps_s += gap / SAMPLE_RATE
                for n in range(gap, 0, -SAMPLE_RATE):  # a second at a time: a long gap costs no big array
                    events += segmenter.feed(np.zeros(min(n, SAMPLE_RATE), np.float32))
                fed += gap
            fed += len(chunk.samples)
            self.stream_t = chunk.t + chunk.duration
            self.counters.audio_s += chunk.duration
            events += segmenter.feed(chunk.samples)
            if chunk.t >= next_level - EPSILON_S:
                next_level = chunk.t + LEVEL_EVERY_S
                await self.put(Level(self.stream, chunk.t, level_db(chunk.samples), segmenter.speaking))
            for ev in events:
                index = await self.on_segment_event(ev, index)
        for ev in segmenter.flush():
            index = await self.on_segment_event(ev, index)
        await self.jobs.put(_END)

    async def on_segment_event(self, ev, index: int) -> int:
        if isinstance(ev, SegmentStart):
            self.open_start = ev.start
            await self.put(SpeechStarted(self.stream, round(ev.start, 3)))
        elif isinstance(ev, Segment):
            self.open_start = None
            self.gathering.append(ev.start)
            self.counters.segments_closed += 1
            request = asyncio.create_task(self.submit(ev))
            await self.jobs.put(_Job(index, ev, time.perf_counter(), request))
            return index + 1
        elif isinstance(ev, SegmentPause):
            await self.start_early(ev)
        elif isinstance(ev, SegmentDiscarded):  # too short to be an utterance: the speech it opened ends here
            self.open_start = None
            self.counters.discarded += 1
            await self.put(SpeechDiscarded(self.stream, round(ev.start, 3), round(ev.end, 3), "too_short"))
        return index

    async def start_early(self, pause: SegmentPause) -> None:
        """Live, with the worker idle: Whisper starts on the segment at its first pause, so if the
        speaker has finished, the final label is nearly ready when the hangover closes the segment.
        Replay never starts early (its results would not change, only its compute grow), nor does a
        busy worker (other streams' finals come first)."""
        if self.live and self.rec.worker.queue_depth() == 0:
            await self.rec.worker.submit(Request(pause.audio, after=pause.after, early=True))

    def face_horizon(self) -> float:
        """Stream time before which no segment, open, queued or yet to come, needs face results."""
        if self.gathering:
            return min(self.gathering)
        if self.open_start is not None:
            return self.open_start
        # Idle: a new segment opens at most a trigger window plus a pre-roll back (and a margin).
        return self.stream_t - 2 * self.vad_options.preroll_ms / 1000 - 1.0

    async def submit(self, seg: Segment) -> Request:
        """Gather the face features of the segment's span (waiting for the face stage in replay) and queue it."""
        if not self.live:
            await self.faces.wait_until(seg.end)
        faces = self.faces.span(seg.start, seg.end)
        self.gathering.remove(seg.start)  # the request holds what it needs: the track may forget them
        vision, posterior = face_input(faces)
        return await self.rec.worker.submit(Request(seg.audio, vision, posterior, self.speaker, self.history,
                                                     after=seg.after))

    async def face(self) -> None:
        model = self.rec._face_model
        if model is None:  # audio only: no segment waits for faces
            self.faces.advance(math.inf)
        loop = asyncio.get_running_loop()
        period = 1.0 / self.cfg.face.rate_hz
        next_t = -math.inf
        while (frame := await self.video_q.get()) is not _END:
            if isinstance(frame, float):  # demux's audio time: no earlier frame is still to come
                self.faces.advance(frame)
                continue
            if frame.t < next_t - EPSILON_S:
                self.faces.advance(frame.t)
                continue
            next_t = frame.t + period
            result = await loop.run_in_executor(self.rec._face_executor, model.analyze, frame.image)
            self.faces.forget_before(self.face_horizon())
            self.faces.add(frame.t, result)
            scores = _canonical_scores(result.posterior) if result is not None else None
            label = max(scores, key=scores.get) if scores else None
            await self.put(FaceUpdate(self.stream, round(frame.t, 3), label, scores, result.box if result else None))
        self.faces.advance(math.inf)
        self.faces_done.set()

    async def emit(self) -> None:
        next_stats = STATS_EVERY_S
        await self.announce(at=0.0)  # what was known before the stream began belongs to its start
        while (job := await self.jobs.get()) is not _END:
            await self.finish(job)
            await self.announce()
            if self.stream_t >= next_stats:
                next_stats = self.stream_t + STATS_EVERY_S
                await self.put(self.stats())
        await self.faces_done.wait()  # frames after the last utterance (or a video without audio) still get their labels
        await self.announce()
        await self.put(self.stats())
        await self.out.put(_END)

    async def announce(self, at: float | None = None) -> None:
        """One `Fallback` event per engine fallback (CUDA missing, out of GPU memory) this stream was not told of.

        Stamped `at` when given, else with the stream time reached: the capture stage may already
        be seconds ahead when the first note goes out, but a note from before the stream is about
        its start."""
        notes = self.rec.engine.fallbacks  # type: ignore[union-attr]
        while self.fallbacks_sent < len(notes):
            t = self.stream_t if at is None else at
            await self.put(Fallback(self.stream, round(t, 3), notes[self.fallbacks_sent], "device"))
            self.fallbacks_sent += 1

    async def finish(self, job: _Job) -> None:
        """Provisional then final label for one segment; any failure becomes one Error event."""
        seg = job.segment
        try:
            request = await job.request
            provisional: Result = await request.provisional
            await self.put(self.utterance(job, request, provisional, final=False))
            final: Result = await request.final
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.counters.errors += 1
            await self.put(Error(self.stream, round(seg.end, 3), f"{type(e).__name__}: {e}", "inference",
                                 (round(seg.start, 3), round(seg.end, 3))))
            return
        # This utterance's share of the worker's compute (its batch's time split evenly).
        self.counters.compute_s += sum(final.timings.get(k, 0.0) for k in ("encode", "asr", "model")) / final.timings.get("batch", 1.0)
        if not final.speech:  # no words and hardly any voice (noise, a door, a click): withdraw the provisional label
            self.counters.no_speech += 1
            await self.put(SpeechDiscarded(self.stream, round(seg.start, 3), round(seg.end, 3), "no_speech", job.index))
            return
        self.counters.utterances += 1
        await self.put(self.utterance(job, request, final, final=True))

    # -- helpers ---------------------------------------------------------------------------------

    def utterance(self, job: _Job, request: Request, r: Result, final: bool) -> Utterance:
        now = time.perf_counter()
        timings = {k: round(v, 4) for k, v in r.timings.items()}
        timings["queue"] = round(request.queue_s if final else 0.0, 4)
        timings["compute"] = round(now - job.closed_at, 4)  # segment closed → label
        if self.live and self.wall0 is not None:
            end_of_speech = job.segment.end - self.vad_tail_s  # segments end with a short silent tail
            timings["end_to_label"] = round(now - (self.wall0 + end_of_speech), 4)
        # The mean face posterior the request was fused with (the face track may have forgotten them since).
        face = request.face_posterior
        face_label = CANONICAL[int(np.argmax(face))] if face is not None else None
        label = shown_label(r.label, r.scores.get(r.label, 0.0), self.cfg.labels.uncertain_below)
        return Utterance(stream=self.stream, index=job.index, start=round(job.segment.start, 3),
                         end=round(job.segment.end, 3), text=r.text, label=label, scores=r.scores, final=final,
                         modalities=r.modalities, timings=timings, face_label=face_label,
                         text_dropped=r.text_dropped, best_guess=r.label)

    def stats(self) -> Stats:
        c = self.counters
        src = self.source_stats
        # A source that counts its drops knows of some the stream cannot see yet (no chunk after them);
        # the gaps see drops through wrappers that hide the source's counters. Both undercount, never over.
        dropped_s = max(float(getattr(src, "dropped_s", 0.0)), c.audio_gaps_s)
        return Stats(stream=self.stream, time=round(self.stream_t, 3), segments_closed=c.segments_closed,
                     utterances=c.utterances, errors=c.errors, no_speech=c.no_speech, discarded=c.discarded,
                     audio_dropped_s=round(dropped_s, 3),
                     frames_dropped=c.frames_dropped + int(getattr(src, "dropped", 0)),
                     overflows=int(getattr(src, "overflows", 0)),
                     queue_depths={"audio": self.audio_q.qsize(), "video": self.video_q.qsize(),
                                   "jobs": self.jobs.qsize(), "inference": self.rec.worker.queue_depth(),
                                   "events": self.out.qsize()},
                     compute_ratio=round(c.compute_s / c.audio_s, 4) if c.audio_s else 0.0)

    async def put(self, event: Event) -> None:
        await self.out.put(event)


def _canonical_scores(posterior: np.ndarray) -> dict[str, float]:
    return {name: round(float(p), 4) for name, p in zip(CANONICAL, posterior)}
