"""Faults and backpressure: every failure ends one item or one resource, never the stream, and no slow
consumer grows memory.

Real VAD, Whisper tiny.en and a tiny checkpoint on espeak-ng speech, as in test_pipeline; only the
devices (microphone, camera, GPU, disk) are fakes, and each fault is injected at a known call.
"""
from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import gc
import io
import json
import threading
import time
import wave
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from rich.console import Console

import stream.record
from fdrl.audio import SAMPLE_RATE, decode_audio, write_wav
from fdrl.predict import resolve_device
from fdrl.face import FACE_DIM, FaceResult
from fdrl.labels import CANONICAL
from fdrl.whisper import Transcript
from stream.events import (Error, Event, FaceUpdate, Fallback, Level, SpeechDiscarded, SpeechStarted, Stats,
                           Utterance)
from stream.inference import Request
from stream.pipeline import FaceTrack, Recognizer
from stream.record import load_session, read_events
from stream.session import SessionOptions, run_session
from stream.sources import AudioChunk, CameraSource, ChunkSource, FileSource, MicrophoneSource, merge
from stream.ui import LiveView, ViewState, run_live, run_plain
from tests.conftest import MIN_RECALL, speak, word_recall
from tests.test_pipeline import THREE, fdrl_threads, finals, make_config, run, speech_file, utterances
from tests.test_sources import FakeInputStream
from tests.test_ui import render_text


def closes(events: list[Event]) -> None:
    """The accounting promise: every SpeechStarted is closed by exactly one final Utterance, Error or
    SpeechDiscarded (matched by start time), and the final Stats say the same."""
    for name in {e.stream for e in events}:
        mine = [e for e in events if e.stream == name]
        started = [e.start for e in mine if isinstance(e, SpeechStarted)]
        final = [e for e in mine if isinstance(e, Utterance) and e.final]
        errors = [e for e in mine if isinstance(e, Error) and e.segment is not None]
        discarded = [e for e in mine if isinstance(e, SpeechDiscarded)]
        closed = [u.start for u in final] + [e.segment[0] for e in errors] + [d.start for d in discarded]
        assert sorted(started) == sorted(closed)
        stats = [e for e in mine if isinstance(e, Stats)][-1]
        assert stats is mine[-1], "a run ends with its final Stats"
        assert stats.segments_closed == stats.utterances + stats.errors + stats.no_speech
        assert len(started) == stats.segments_closed + stats.discarded
        assert (stats.utterances, stats.errors) == (len(final), len(errors))
        assert stats.no_speech + stats.discarded == len(discarded)


def of(kind: type, events: list[Event]) -> list:
    return [e for e in events if isinstance(e, kind)]


def chunks_alive() -> int:
    """AudioChunk objects anywhere in the process: what a stalled consumer makes someone hold."""
    gc.collect()
    return sum(type(o) is AudioChunk for o in gc.get_objects())


@contextlib.contextmanager
def fault(engine: Any, method: str, at: set[int], make: Callable[..., Any]):
    """Calls number `at` (1-based, counted from here) of `engine.<method>` return `make(*args)` instead
    (raise from it for an exception); the others run the real method."""
    real = getattr(engine, method)
    calls = 0

    def patched(*args):
        nonlocal calls
        calls += 1
        return make(*args) if calls in at else real(*args)

    setattr(engine, method, patched)
    try:
        yield
    finally:
        delattr(engine, method)  # the instance attribute goes; the class method is back


def raising(e: BaseException) -> Callable[..., Any]:
    def make(*args):
        raise e
    return make


def oom(*args):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


# -- media, generated once ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("faults")
    three = speech_file(d / "three.wav", THREE)
    # "uh" trips the VAD but has too little voice for an utterance; the sentence after it is one.
    uh = speak("uh", d / "uh.wav")
    window = speak("please open the window", d / "window.wav")
    def silence(seconds: float) -> np.ndarray:
        return np.zeros(round(seconds * SAMPLE_RATE), np.float32)

    write_wav(d / "short.wav", np.concatenate([silence(0.5), uh, silence(1.5), window, silence(1.5)]))
    # Three sentences, then 50 s of silence: long enough to see what a session keeps.
    write_wav(d / "long_tail.wav", np.concatenate([decode_audio(three.path), silence(50.0)]))
    noise = (np.random.default_rng(0).standard_normal(120 * SAMPLE_RATE) * 10 ** (-50 / 20)).astype(np.float32)
    write_wav(d / "noise.wav", noise)
    return {"three": three, "short": d / "short.wav", "long_tail": d / "long_tail.wav", "noise": d / "noise.wav",
            "dir": d}


async def replay(rec: Recognizer, path: Path, **kw) -> list[Event]:
    return [e async for e in rec.run(FileSource(path, **kw))]


# -- faults in the middle of a stream: one recognizer, one scenario per replay ------------------------


class Scenarios(dict):
    """Events per scenario; `frames[name]`: the audio frame count of every request that ended in a label."""

    frames: dict[str, list[int]]


@pytest.fixture(scope="module")
def scenarios(media, tiny_checkpoint, tmp_path_factory) -> Scenarios:
    """The three-sentence file replayed with a fault at its second segment (one segment per batch), and
    the short-sound file as it is. Calls per segment: encode 1, classify 2 (provisional, final), transcribe 1."""
    # A voice threshold no segment reaches: "no speech" (Whisper hears no words in a spoken segment)
    # then stands for noise and is withdrawn; a wordless voice keeping its label is tests/test_asr_gate.py's.
    cfg = make_config(tmp_path_factory.mktemp("cfg"), "runtime.max_batch=1", "asr.gate_min_voiced_s=30.0")
    three = media["three"].path
    silent = Transcript(text="", words=[], no_speech_prob=0.95, avg_logprob=-1.2)
    out = Scenarios()
    out.frames = {}

    async def main() -> Scenarios:
        async with Recognizer(cfg, tiny_checkpoint, face=False) as rec:
            engine = rec.engine
            submit, requests = rec.worker.submit, []

            async def spying(request: Request) -> Request:
                requests.append(request)
                return await submit(request)

            rec.worker.submit = spying

            async def scenario(name: str, path: Path) -> None:
                requests.clear()
                out[name] = await replay(rec, path)
                assert len({id(r.speaker) for r in requests}) == 1  # one stream, one speaker's statistics
                labelled = [r for r in requests if r.final.done() and not r.final.exception() and r.final.result().speech]
                out.frames[name] = [len(engine.recipe.whisper_frames(engine.encode([r])[0][0])) for r in labelled]
                out.frames[name].append(requests[0].speaker.heard.n if requests[0].speaker.heard else 0)

            with fault(engine, "encode", {2}, raising(RuntimeError("encoder fell over"))):
                await scenario("whisper raises", three)
            with fault(engine, "classify", {4}, raising(RuntimeError("model fell over"))):
                await scenario("model raises", three)
            with fault(engine, "transcribe", {2}, lambda *a: silent):
                await scenario("no speech", three)
            await scenario("short sound", media["short"])
            for method, at in (("classify", {4}), ("transcribe", {2})):
                engine.device = "cuda"  # as if loaded on a GPU: the CPU is then a fallback
                whisper = engine.whisper
                with fault(engine, method, at, oom):
                    await scenario(f"oom in {method}", three)
                assert engine.device == "cpu" and engine.whisper is not whisper  # reloaded on the CPU
        return out

    return run(main(), timeout=120)


@pytest.mark.parametrize("name, labelled", [("whisper raises", 2), ("model raises", 2), ("no speech", 2),
                                            ("short sound", 1), ("oom in classify", 3), ("oom in transcribe", 3)])
def test_every_labelled_utterance_counts_once_in_the_speaker_statistics(scenarios, name, labelled):
    """Speaker normalization (fdrl/speaker.py) learns a stream's speaker from what it says: failed and
    no-speech segments do not count, and a batch run twice (out of GPU memory) counts once."""
    *frames, heard = scenarios.frames[name]
    assert len(frames) == labelled and heard == sum(frames) > 0


@pytest.mark.parametrize("name, message, provisional", [("whisper raises", "encoder fell over", [0, 2]),
                                                        ("model raises", "model fell over", [0, 1, 2])])
def test_a_failure_mid_stream_errors_its_segment_and_the_next_goes_on(media, scenarios, name, message, provisional):
    events, speech = scenarios[name], media["three"]
    errors = of(Error, events)
    assert len(errors) == 1 and errors[0].message == f"RuntimeError: {message}" and errors[0].stage == "inference"
    final = finals(events)
    assert [u.index for u in final] == [0, 2]
    assert word_recall(speech.keys[0], final[0].text) >= MIN_RECALL and word_recall(speech.keys[2], final[1].text) >= MIN_RECALL
    # The encoder failed before any label; the model failed after the audio-only one was out.
    assert sorted(u.index for u in utterances(events) if not u.final) == provisional
    assert not of(Fallback, events)
    closes(events)


def test_a_segment_whisper_hears_no_words_in_is_withdrawn(scenarios):
    events = scenarios["no speech"]
    [discarded] = of(SpeechDiscarded, events)
    [provisional] = [u for u in utterances(events) if u.index == 1]
    assert not provisional.final and events.index(provisional) < events.index(discarded)
    assert (discarded.reason, discarded.index) == ("no_speech", 1)
    assert (discarded.start, discarded.end) == (provisional.start, provisional.end)
    assert [u.index for u in finals(events)] == [0, 2]
    assert of(Stats, events)[-1].no_speech == 1
    closes(events)


def test_a_sound_too_short_for_an_utterance_closes_its_speech(scenarios):
    events = scenarios["short sound"]
    started, discarded = of(SpeechStarted, events), of(SpeechDiscarded, events)
    assert len(started) == 2 and len(discarded) == 1
    first = events.index(started[0])
    assert events[first + 1:].index(discarded[0]) < events[first + 1:].index(started[1])  # closed before the next
    assert discarded[0].reason == "too_short" and discarded[0].index is None
    assert discarded[0].start == started[0].start < discarded[0].end < started[1].start
    [u] = finals(events)
    assert word_recall({"open", "window"}, u.text) >= MIN_RECALL and u.index == 0  # the discarded sound took no index
    stats = of(Stats, events)[-1]
    assert (stats.segments_closed, stats.discarded, stats.utterances) == (1, 1, 1)
    closes(events)


@pytest.mark.parametrize("method", ["classify", "transcribe"])
def test_out_of_gpu_memory_moves_to_the_cpu_and_loses_no_utterance(media, scenarios, method):
    events, speech = scenarios[f"oom in {method}"], media["three"]
    assert not of(Error, events)
    final = finals(events)
    assert [u.index for u in final] == [0, 1, 2]
    assert all(word_recall(keys, u.text) >= MIN_RECALL for u, keys in zip(final, speech.keys)), [u.text for u in final]
    # One label per stage and segment: the retried batch's second provisional was not sent again.
    assert sorted(u.index for u in utterances(events) if not u.final) == [0, 1, 2]
    *earlier, fallback = of(Fallback, events)
    assert fallback.stage == "device" and "out of memory" in fallback.message and "CPU" in fallback.message
    assert events.index(final[1]) < events.index(fallback) < events.index(final[2])  # told once it happened
    # A stream that starts after a fallback hears of it first (here the previous scenario's).
    assert len(earlier) == (method == "transcribe") and all(events.index(e) < events.index(final[0]) for e in earlier)
    closes(events)


def test_cuda_missing_runs_on_the_cpu_and_says_so_once_per_stream(media, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = make_config(tmp_path)

    async def main() -> list[list[Event]]:
        async with Recognizer(cfg, tiny_checkpoint, device="cuda", face=False) as rec:
            assert rec.device == "cpu"
            return [await replay(rec, media["short"]), await replay(rec, media["short"])]

    for events in run(main(), timeout=60):
        [fallback] = of(Fallback, events)
        assert fallback.stage == "device" and fallback.time == 0.0
        assert fallback.message == "runtime.device is 'cuda' but CUDA is not available: running on the CPU (slower)"
        assert events.index(fallback) < events.index(finals(events)[0])
        closes(events)


def test_resolve_device_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    told: list[str] = []
    assert resolve_device("cuda", warn=told.append) == "cpu" and len(told) == 1
    assert resolve_device("auto", warn=told.append) == "cpu" and resolve_device("cpu", warn=told.append) == "cpu"
    assert len(told) == 1  # asking for "auto" or "cpu" is no fallback
    with pytest.warns(RuntimeWarning, match=r"CUDA is not available: running on the CPU"):
        assert resolve_device("cuda") == "cpu"


# -- the camera lost mid-session -----------------------------------------------------------------------


class StoppingCamera:
    """cv2.VideoCapture stand-in: a grey picture every 10 ms for `frames` reads, then nothing (unplugged)."""

    def __init__(self, frames: int) -> None:
        self.frames, self.reads, self.released = frames, 0, False

    def isOpened(self) -> bool:  # noqa: N802 - mirrors OpenCV
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(0.01)
        self.reads += 1
        return (True, np.full((48, 64, 3), 90, np.uint8)) if self.reads <= self.frames else (False, None)

    def release(self) -> None:
        self.released = True


async def played(mic: MicrophoneSource, seconds: float):
    """The microphone's chunks until the fake device has played `seconds` (chunk times stay true when
    chunks are dropped, so the last one ends there), then end."""
    async with aclosing(aiter(mic)) as chunks:
        async for chunk in chunks:
            yield chunk
            if chunk.t + chunk.duration >= seconds - 1e-6:
                return


def fake_mic(signal: np.ndarray, interval: float, queue_size: int,
             gate: threading.Event | None = None) -> tuple[MicrophoneSource, list[FakeInputStream]]:
    """A 16 kHz mono microphone playing `signal` in 30 ms blocks, one every `interval` seconds
    (after the first block, only once `gate` is set, if given)."""
    streams: list[FakeInputStream] = []

    def factory(**kw):
        callback, played = kw["callback"], 0

        def gated(*args):
            nonlocal played
            callback(*args)
            played += 1
            if played == 1 and gate is not None:
                gate.wait(10)

        streams.append(FakeInputStream(signal[:, None], interval=interval, **{**kw, "callback": gated}))
        return streams[-1]

    return MicrophoneSource(sample_rate=SAMPLE_RATE, block_ms=30, queue_size=queue_size, stream_factory=factory), streams


def whole_blocks(audio: np.ndarray, block: int = 480) -> np.ndarray:
    return audio[: len(audio) // block * block]


def test_camera_lost_mid_session_goes_on_with_audio_and_tells_the_user(media, tiny_checkpoint, tmp_path):
    cfg = make_config(tmp_path)
    speech = media["three"]
    signal = whole_blocks(decode_audio(speech.path))
    mic, _ = fake_mic(signal, interval=0.008, queue_size=10_000)  # ~4x real time, nothing dropped
    camera = StoppingCamera(frames=20)  # about 0.2 s of pictures, then unplugged
    source = merge(played(mic, len(signal) / SAMPLE_RATE), CameraSource(0, fps=10, capture_factory=lambda i: camera))
    out, screen = tmp_path / "events.jsonl", io.StringIO()
    options = SessionOptions(live=True, jsonl=out, checkpoint=tiny_checkpoint, face=True)

    run(run_session(cfg, source, options, console=Console(file=screen)), timeout=60)

    events = read_events(out)
    [lost] = of(Fallback, events)
    assert lost.stage == "camera" and lost.message == "camera 0 stopped sending frames: carrying on with audio only"
    faces = of(FaceUpdate, events)
    assert faces and all(f.time <= lost.time for f in faces)  # pictures before, none after
    final = finals(events)
    assert [u.index for u in final] == [0, 1, 2]  # utterances kept coming after the camera went
    assert all(word_recall(keys, u.text) >= MIN_RECALL for u, keys in zip(final, speech.keys)), [u.text for u in final]
    assert events.index(lost) < events.index(final[-1])
    assert camera.released
    closes(events)
    # The user sees it: a warning line in the plain view, "camera lost" in the live one.
    assert "warning: camera 0 stopped sending frames: carrying on with audio only" in screen.getvalue()
    view = LiveView()
    for e in events:
        view.apply(e)
    assert "camera lost" in render_text(view) and "warning at" in render_text(view)


def test_the_view_shows_fallbacks_and_withdraws_discarded_labels():
    s = ViewState(device="cuda")
    scores = {name: (0.9 if name == "anger" else 0.1 / 6) for name in CANONICAL}
    s.apply(Utterance(stream="0", index=0, start=1.0, end=2.0, text="stop it", label="anger", scores=scores, final=True,
                      modalities=("audio", "text"), timings={}))
    s.apply(SpeechStarted("0", 3.0))
    s.apply(Utterance(stream="0", index=1, start=3.0, end=4.0, text="", label="fear", scores={"fear": 1.0}, final=False,
                      modalities=("audio",), timings={}))
    assert s.label == "fear"
    s.apply(SpeechDiscarded("0", 3.0, 4.0, "no_speech", 1))
    assert [u.index for u in s.lines()] == [0] and (s.label, s.current) == ("anger", ("0", 0))
    s.apply(SpeechStarted("0", 5.0))
    s.apply(SpeechDiscarded("0", 5.0, 5.6, "too_short"))
    assert not s.speaking and [u.index for u in s.lines()] == [0]
    s.apply(Fallback("0", 6.0, "the GPU ran out of memory: running on the CPU from now on (slower)", "device"))
    assert s.device == "cpu"
    view = LiveView()
    view.state = s
    text = render_text(view)
    assert "warning at 6.0 s: the GPU ran out of memory" in text and "(provisional)" not in text


# -- backpressure ----------------------------------------------------------------------------------


def test_replay_source_waits_for_a_consumer_that_stops_reading(media, tiny_checkpoint, tmp_path):
    """120 s of audio: a consumer that stops after one event holds the decoder at the queues' size, and
    on reading again gets everything (replay never drops)."""
    cfg = make_config(tmp_path)
    pulled = 0

    async def counted(source):
        nonlocal pulled
        async with aclosing(aiter(source)) as items:
            async for item in items:
                pulled += 1
                yield item

    async def main() -> tuple[list[Event], list[int]]:
        async with Recognizer(cfg, tiny_checkpoint, face=False) as rec:
            events, seen = [], []
            async for event in rec.run(counted(FileSource(media["noise"], chunk_ms=100))):
                events.append(event)
                if len(events) == 1:  # stop reading for a while
                    for _ in range(3):
                        await asyncio.sleep(0.4)
                        seen.append(pulled)
                    [r] = rec._runs
                    assert r.out.full() and r.audio_q.full()  # every queue behind the consumer is full ...
            return events, seen

    events, seen = run(main(), timeout=60)
    # ... and the source waits: out (256 events, one Level per chunk) + audio_q (64) + one in each stage.
    assert seen[0] == seen[-1] <= 256 + 64 + 4
    levels = of(Level, events)
    assert len(levels) == 1200 and levels[-1].time == pytest.approx(119.9)  # nothing dropped
    stats = of(Stats, events)[-1]
    assert stats.audio_dropped_s == 0 and stats.time == pytest.approx(120.0)
    closes(events)


def test_live_consumer_that_stops_reading_drops_audio_counted_and_keeps_time(media, tiny_checkpoint, tmp_path):
    """A live microphone 30x faster than real time and a consumer that stops: the microphone drops its
    oldest audio (counted), memory holds only the queues, and stream times stay true."""
    cfg = make_config(tmp_path)
    signal = whole_blocks(decode_audio(media["noise"])[: 60 * SAMPLE_RATE])
    mic, streams = fake_mic(signal, interval=0.001, queue_size=20)

    async def main() -> tuple[list[Event], int]:
        async with Recognizer(cfg, tiny_checkpoint, face=False) as rec:
            events: list[Event] = []
            held = 0
            async for event in rec.run(played(mic, 60.0), live=True):
                events.append(event)
                if len(events) == 1:
                    while not streams[0].finished.is_set():  # the device plays on while nobody reads
                        await asyncio.sleep(0.05)
                    held = chunks_alive()
            return events, held

    events, held = run(main(), timeout=60)
    # Held while stalled: the microphone's 20 and the pipeline's audio queue of 64 (+ one per stage),
    # of the 2000 chunks played.
    assert held <= 20 + 64 + 4
    stats = of(Stats, events)[-1]
    assert stats.audio_dropped_s > 10 and stats.audio_dropped_s == pytest.approx(mic.dropped_s, abs=0.031)
    assert stats.time == pytest.approx(60.0)  # the chunks after a drop keep their true times
    levels = [e.time for e in of(Level, events)]
    assert max(np.diff(levels)) > 10  # the meter skipped the dropped audio
    closes(events)
    # The counts reach the user.
    view = LiveView()
    view.apply(stats)
    assert f"audio dropped {stats.audio_dropped_s:.1f} s" in render_text(view)


def test_live_mode_drops_the_oldest_video_frames_not_audio(tiny_checkpoint, tmp_path):
    """A face stage slower than the camera: in live mode old frames are dropped (counted) so the newest
    get analysed, while audio from a source that can wait is never dropped."""
    cfg = make_config(tmp_path)

    class SlowFace:
        def analyze(self, image: np.ndarray) -> None:  # finds no face, slowly
            time.sleep(0.25)  # slower than face.rate_hz (5/s) asks for

    async def audio():  # 3 s in real time, 10 ms blocks
        for _ in range(300):
            yield np.zeros(160, np.float32)
            await asyncio.sleep(0.01)

    async def video():  # 2 s at 50 frames/s
        for k in range(100):
            yield k * 0.02, np.zeros((8, 8, 3), np.uint8)
            await asyncio.sleep(0.02)

    async def main() -> list[Event]:
        async with Recognizer(cfg, tiny_checkpoint, face=False) as rec:
            rec._face_model = SlowFace()
            return [e async for e in rec.run(ChunkSource(audio(), video=video()), live=True)]

    events = run(main(), timeout=60)
    stats = of(Stats, events)[-1]
    faces = of(FaceUpdate, events)
    assert stats.frames_dropped > 20 and len(faces) + stats.frames_dropped <= 100
    assert stats.audio_dropped_s == 0 and stats.time == pytest.approx(3.0)
    assert faces[-1].time >= 1.8  # after the backlog, the last frames were analysed: the old ones went


def test_microphone_holds_at_most_its_queue_while_the_event_loop_is_blocked():
    """A stalled terminal or disk written from the event loop blocks the loop: the microphone must not
    queue its chunks behind it (they used to wait as loop callbacks, without bound)."""
    signal = whole_blocks(np.zeros(3 * SAMPLE_RATE, np.float32))
    go = threading.Event()
    mic, streams = fake_mic(signal, interval=0.0005, queue_size=5, gate=go)

    async def main() -> tuple[int, list[AudioChunk]]:
        async with aclosing(aiter(mic)) as chunks:
            first = await anext(chunks)
            go.set()
            # The loop is blocked (a wait, not an await) while the device plays its other 99 blocks.
            assert streams[0].finished.wait(10)
            held = chunks_alive()
            rest = [await anext(chunks) for _ in range(mic.queue_depth())]
        return held, [first, *rest]

    held, got = run(main(), timeout=20)
    assert held <= 1 + 5  # the one taken, and the newest five
    assert len(got) == 6 and got[-1].t + got[-1].duration == pytest.approx(3.0)
    assert sum(c.duration for c in got) + mic.dropped_s == pytest.approx(3.0)


class StalledFile(io.StringIO):
    """A terminal or pipe whose reader stopped: writes after the first `free` block until `resume` is set."""

    def __init__(self, free: int = 0) -> None:
        super().__init__()
        self.free, self.resume, self.blocked = free, threading.Event(), threading.Event()

    def write(self, s: str) -> int:
        if self.free > 0:
            self.free -= 1
        else:
            self.blocked.set()
            assert self.resume.wait(10)
        return super().write(s)


async def counting_events(n: int, pulled: list[int], end: asyncio.Event | None = None):
    for k in range(n):
        pulled[0] += 1
        yield Utterance(stream="0", index=k, start=k, end=k + 0.5, text=f"line {k}", label="neutral", scores={"neutral": 1.0},
                        final=True, modalities=("audio",), timings={})
        await asyncio.sleep(0.002)
    if end is not None:
        await end.wait()  # the stream stays open until told


def test_a_stalled_pipe_holds_back_the_plain_view_but_not_the_event_loop():
    out, pulled = StalledFile(), [0]

    async def main() -> None:
        view = asyncio.create_task(run_plain(counting_events(50, pulled), out))
        ticks = 0
        while ticks < 30:  # the loop keeps running while the pipe is stalled
            await asyncio.sleep(0.01)
            ticks += 1
        assert out.blocked.is_set() and pulled[0] == 1  # the view waits on its write: backpressure
        out.resume.set()
        await view

    asyncio.run(asyncio.wait_for(main(), 20))
    lines = out.getvalue().splitlines()
    assert len(lines) == 50 and lines[-1].endswith('"line 49"')


def test_a_stalled_terminal_neither_blocks_the_loop_nor_the_live_view():
    file, pulled = StalledFile(free=4), [0]  # Live's first draw goes through; the next ones stall
    console = Console(file=file, force_terminal=True, width=100)

    async def main() -> None:
        end = asyncio.Event()
        view = asyncio.create_task(run_live(counting_events(100, pulled, end), console, refresh_hz=30))
        while pulled[0] < 100:  # every event is consumed and folded into the state meanwhile
            await asyncio.sleep(0.01)
        assert file.blocked.is_set() and not view.done()
        file.resume.set()
        end.set()
        await view

    asyncio.run(asyncio.wait_for(main(), 20))
    assert "line 99" in file.getvalue()  # the final state was drawn once the terminal read again


# -- the face track stays bounded ---------------------------------------------------------------------


def write_mp4(path: Path, seconds: float, fps: int = 10) -> Path:
    """Video whose grey level says which canonical label a fake face analyser sees: a new one every second."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * fps)):
            grey = 18 + 36 * ((i // fps) % len(CANONICAL))
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), grey, np.uint8), format="bgr24")
            frame.pts = i
            c.mux(v.encode(frame))
        c.mux(v.encode())
    return path


class GreyFace:
    """A face analyser that reads the label off the picture's grey level."""

    def analyze(self, image: np.ndarray) -> FaceResult:
        label = min(int(image.mean() // 36), len(CANONICAL) - 1)
        posterior = np.full(len(CANONICAL), 0.02, np.float32)
        posterior[label] = 1 - 0.02 * (len(CANONICAL) - 1)
        return FaceResult((0, 0, 64, 48), posterior, np.zeros(FACE_DIM, np.float32))


def test_face_results_are_kept_only_while_a_segment_may_need_them(media, tiny_checkpoint, tmp_path, monkeypatch):
    """A minute of video at 5 faces/s: the pruned track stays small and labels every utterance exactly
    as the whole track would."""
    cfg = make_config(tmp_path)
    video = write_mp4(tmp_path / "faces.mp4", 60.0)
    sizes: list[int] = []
    add = FaceTrack.add

    def recording_add(self, t, result):
        add(self, t, result)
        sizes.append(len(self.times))

    monkeypatch.setattr(FaceTrack, "add", recording_add)

    async def main() -> tuple[list[Event], list[Event]]:
        async with Recognizer(cfg, tiny_checkpoint, face=False) as rec:
            rec._face_model = GreyFace()
            pruned = await replay(rec, media["long_tail"], video_path=video)
            with monkeypatch.context() as m:
                m.setattr(FaceTrack, "forget_before", lambda self, t: None)
                whole = await replay(rec, media["long_tail"], video_path=video)
        return pruned, whole

    pruned, whole = run(main(), timeout=60)
    n = len(of(FaceUpdate, pruned))  # one track entry per face analysed
    assert n == len(of(FaceUpdate, whole)) == 300 and len(sizes) == 2 * n
    # Kept: the span of the segment being spoken and a few seconds of lookback, at 5 faces/s.
    assert max(sizes[n:]) == 300 and max(sizes[:n]) <= 30

    def labels(events):
        return [(u.index, u.final, u.label, u.face_label, u.modalities) for u in utterances(events)]

    assert len(finals(pruned)) == 3 and all(u.face_label is not None and "face" in u.modalities for u in finals(pruned))
    assert labels(pruned) == labels(whole)
    for a, b in zip(utterances(pruned), utterances(whole)):  # bf16 on some CPUs: batch makeup moves the 4th decimal
        assert a.scores == pytest.approx(b.scores, abs=2e-3)
    closes(pruned)


def test_a_video_without_audio_gets_every_face_label_however_slow_the_face_stage(tiny_checkpoint, tmp_path):
    """Replay is deterministic: with no audio the stream used to end as soon as the (empty) audio side
    did, cutting off the frames the face stage had not reached yet."""
    cfg = make_config(tmp_path)
    video = write_mp4(tmp_path / "faces.mp4", 3.0)

    class SlowGreyFace(GreyFace):
        def analyze(self, image: np.ndarray) -> FaceResult:
            time.sleep(0.05)
            return super().analyze(image)

    async def main() -> list[Event]:
        async with Recognizer(cfg, tiny_checkpoint, face=False) as rec:
            rec._face_model = SlowGreyFace()
            return await replay(rec, video, video_path=video)

    faces = of(FaceUpdate, run(main(), timeout=60))
    assert [f.time for f in faces] == pytest.approx([k * 0.2 for k in range(15)])
    assert [f.label for f in faces] == [CANONICAL[min(k // 5, len(CANONICAL) - 1)] for k in range(15)]


# -- the disk full while recording --------------------------------------------------------------------


class Disk:
    """`open` for stream.record with `free` bytes left: a write that does not fit writes what fits and raises
    ENOSPC. Files opened "r+b" (the recorder fixing up after a failure) write in place, as on a real disk."""

    def __init__(self, free: int) -> None:
        self.free = free

    def open(self, path, mode: str = "r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if "w" in mode:
            real = f.write

            def write(data):
                n = len(data)
                if n > self.free:
                    real(bytes(data)[: self.free])
                    self.free = 0
                    raise OSError(errno.ENOSPC, "No space left on device")
                self.free -= n
                return real(data)

            f.write = write
        return f


def test_disk_full_while_recording_stops_only_the_recording(media, tiny_checkpoint, tmp_path, monkeypatch):
    """The recording stops with one Error event and valid files; the labels go on to the final Stats."""
    cfg = make_config(tmp_path)
    monkeypatch.setattr(stream.record, "open", Disk(free=60_000).open, raising=False)
    rec = tmp_path / "rec"
    options = SessionOptions(record=rec, checkpoint=tiny_checkpoint, face=False)
    before = fdrl_threads()
    screen = io.StringIO()

    stats = run(run_session(cfg, FileSource(media["three"].path), options, console=Console(file=screen, width=400)),
                timeout=60)

    assert stats is not None and stats.utterances == 3
    assert stats.segments_closed == stats.utterances + stats.errors + stats.no_speech
    told = [line for line in screen.getvalue().splitlines() if "error in output" in line]
    assert len(told) == 1, told
    assert "recording stopped, the session goes on" in told[0]
    assert "audio.wav: No space left on device (free some disk space" in told[0]
    assert not [p.name for p in rec.iterdir() if p.name.endswith(".tmp")]  # no empty session.json.tmp

    for _ in range(100):  # the decoder thread stops within its poll interval
        if fdrl_threads() <= before:
            break
        time.sleep(0.01)
    assert fdrl_threads() <= before
    with wave.open(str(rec / "audio.wav")) as w:  # a complete WAV of what fitted
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
        frames = w.getnframes()
        samples = np.frombuffer(w.readframes(frames), np.int16)
    assert (rec / "audio.wav").stat().st_size == 44 + 2 * frames and 1.0 < frames / SAMPLE_RATE < 1.9
    original = np.round(decode_audio(media["three"].path)[:frames] * 32767).astype(np.int16)
    np.testing.assert_array_equal(samples, original)
    for line in (rec / "events.jsonl").read_text(encoding="utf-8").splitlines():
        json.loads(line)  # every line that is there is whole
    meta = load_session(rec).meta
    assert meta["complete"] is False and "No space left on device" in meta["error"]
