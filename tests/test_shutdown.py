"""Stopping a session mid-utterance: SIGINT, SIGTERM, a stop event or cancellation label what was said,
leave valid files, print the final Stats and end within 2 s; a second signal kills at once.

The CLI runs in a real subprocess on generated speech replayed at realtime pace (the shipped
checkpoint), so the signals, the exit status and the exit time are the real ones.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from contextlib import aclosing
from pathlib import Path

import pytest
from rich.console import Console

from fdrl.audio import SAMPLE_RATE, decode_audio
from stream.events import Stats, event_from_json
from stream.record import load_session, read_events
from stream.session import SessionOptions, run_session, stop_on_signals, until_stopped
from stream.sources import FileSource, MicrophoneSource
from tests.test_pipeline import THREE, Speech, assert_accounting, make_config, speech_file
from tests.test_session import stereo_44k
from tests.test_sources import FakeInputStream

EXIT_LIMIT_S = 2.0
HANGOVER_S = 0.5  # vad.hangover_ms: a segment stays open this long after the voice stops
# Stop this long after the VAD says speech started (~0.2 s into a 1.5 s sentence): past
# vad.min_utterance_ms of voice, so the cut segment is an utterance, not a discarded blip.
MID_S = 0.6


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Speech:
    """Two sentences; the tests stop the session while the second (1.5 s) is being spoken."""
    return speech_file(tmp_path_factory.mktemp("speech") / "two.wav", [THREE[0], THREE[2]], lead=0.3, pause=0.9)


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def count_type(path: Path, kind: str) -> int:
    try:
        return path.read_text(encoding="utf-8").count(f'"type": "{kind}"')
    except FileNotFoundError:
        return 0


def wait_until(condition, proc: subprocess.Popen | None = None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"fdrl ended early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
        return w.getnframes() / SAMPLE_RATE


def check_stopped_run(events_path: Path, stopped_at: float, segments: int = 2) -> Stats:
    """The events of a run stopped at stream time `stopped_at` while its last segment was open: every line
    is JSON, it ends with a final Stats that balances, and that segment was closed at the stop and finished."""
    lines = json_lines(events_path)
    final = event_from_json(lines[-1])
    assert isinstance(final, Stats) and final.segments_closed == segments
    assert_accounting(final)
    finals = [e for e in lines if e["type"] == "utterance" and e["final"]]
    assert len(finals) == final.utterances and sum(e["type"] == "error" for e in lines) == final.errors
    last = [e for e in lines if e["type"] == "utterance" and e["index"] == segments - 1]
    # Closed where the source stopped (less a pause between words the VAD heard as silence).
    assert last and all(stopped_at - 0.4 < e["end"] <= stopped_at + 0.001 for e in last)
    return final


def start_cli(speech: Speech, tmp_path: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "stream.cli", "--set", f"paths.cache_dir='{tmp_path / 'cache'}'", "replay",
            str(speech.path), "--pace", "realtime", "--no-video", "--record", str(tmp_path / "rec"), "--jsonl", str(tmp_path / "out.jsonl")]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def caught(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (Linux: the SigCgt mask of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    raise AssertionError("no SigCgt line")


# -- the command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_stops_cleanly_on_a_signal_mid_utterance(speech, tmp_path, signum):
    out, rec = tmp_path / "out.jsonl", tmp_path / "rec"
    proc = start_cli(speech, tmp_path)
    try:
        wait_until(lambda: count_type(out, "speech_started") >= 2, proc)  # the second sentence has begun
        time.sleep(MID_S)
        sent = time.monotonic()
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, stderr
    assert elapsed < EXIT_LIMIT_S, f"exited {elapsed:.2f} s after the signal"
    assert "Traceback" not in stderr and "unlabelled" not in stderr
    assert stdout.strip().splitlines()[-1].startswith("stats [0] at ")  # the plain view's final line

    seconds = wav_seconds(rec / "audio.wav")
    start, end = speech.spans[1]
    assert start < seconds < end + HANGOVER_S  # the source stopped while the second segment was open
    session = load_session(rec)
    assert session.meta["complete"] is True and session.meta["audio_s"] == pytest.approx(seconds, abs=0.01)
    stats = check_stopped_run(out, seconds)
    assert json_lines(session.events)[-1] == json_lines(out)[-1] == stats.to_json()
    assert f"{stats.utterances} utterances, 2 segments" in stdout.splitlines()[-1]


def test_cli_second_signal_kills_at_once(speech, tmp_path):
    out, rec = tmp_path / "out.jsonl", tmp_path / "rec"
    proc = start_cli(speech, tmp_path)
    try:
        wait_until(out.exists, proc)  # the session has begun (signal handlers set): models are loading
        proc.send_signal(signal.SIGINT)  # a graceful stop begins: it waits for the models
        wait_until(lambda: not caught(proc.pid, signal.SIGINT), proc, timeout=5)  # the first was handled
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGINT  # killed by the signal itself, not an orderly exit
    assert elapsed < 0.5
    assert read_events(out) == []
    assert wav_seconds(load_session(rec).audio) == 0.0  # the files are valid even so


def test_cli_signal_while_loading_still_exits_in_time(speech, tmp_path):
    """The models take seconds to load and cannot be interrupted: the process still ends within 2 s."""
    out, rec = tmp_path / "out.jsonl", tmp_path / "rec"
    proc = start_cli(speech, tmp_path)
    try:
        wait_until(out.exists, proc)  # the session has begun (signal handlers set): models are loading
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert elapsed < EXIT_LIMIT_S, f"exited {elapsed:.2f} s after the signal"
    assert "Traceback" not in stderr
    assert wav_seconds(load_session(rec).audio) == 0.0
    assert all(e["type"] == "stats" for e in json_lines(out))  # nothing, or a final Stats of nothing


# -- the library: a stop event, signals, cancellation ---------------------------------------------------


def quiet() -> Console:
    return Console(file=io.StringIO())


async def during_sentence(path: Path, n: int) -> None:
    """Return while the `n`th sentence is being spoken, `MID_S` after the VAD heard it start."""
    while count_type(path, "speech_started") < n:
        await asyncio.sleep(0.02)
    await asyncio.sleep(MID_S)


def test_live_session_on_a_fake_microphone_stops_on_sigint(speech, tmp_path):
    cfg = make_config(tmp_path)
    signal_ = stereo_44k(decode_audio(speech.path))
    streams: list[FakeInputStream] = []

    def device(**kw) -> FakeInputStream:  # a microphone playing the speech at real time
        streams.append(FakeInputStream(signal_, interval=0.03, **kw))
        return streams[-1]

    mic = MicrophoneSource(sample_rate=44100, channels=2, block_ms=30, stream_factory=device)
    out, rec = tmp_path / "live.jsonl", tmp_path / "rec"
    options = SessionOptions(live=True, jsonl=out, record=rec, face=False)
    before = signal.getsignal(signal.SIGINT)

    async def session() -> tuple[Stats | None, list[int], float]:
        stop = asyncio.Event()
        with stop_on_signals(stop) as received:
            task = asyncio.create_task(run_session(cfg, mic, options, console=quiet(), stop=stop))
            await during_sentence(out, 2)
            sent = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)
            stats = await task
            return stats, received, time.monotonic() - sent

    stats, received, elapsed = asyncio.run(asyncio.wait_for(session(), 90))
    assert received == [signal.SIGINT] and signal.getsignal(signal.SIGINT) is before  # handlers put back
    assert elapsed < EXIT_LIMIT_S
    assert streams[0].closed and not streams[0].running.is_set()  # the device was stopped and closed
    seconds = wav_seconds(rec / "audio.wav")
    assert speech.spans[1][0] < seconds < speech.spans[1][1] + HANGOVER_S
    assert stats == check_stopped_run(out, seconds)
    assert load_session(rec).meta["complete"] is True
    assert json_lines(rec / "events.jsonl")[-1] == stats.to_json()


def test_cancelled_session_labels_the_open_segment_first(speech, tmp_path):
    cfg = make_config(tmp_path)
    out, rec = tmp_path / "out.jsonl", tmp_path / "rec"
    options = SessionOptions(jsonl=out, record=rec, face=False)

    async def session() -> float:
        task = asyncio.create_task(run_session(cfg, FileSource(speech.path, pace="realtime"), options, console=quiet()))
        await during_sentence(out, 1)
        sent = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - sent

    elapsed = asyncio.run(asyncio.wait_for(session(), 90))
    assert elapsed < EXIT_LIMIT_S
    seconds = wav_seconds(rec / "audio.wav")
    assert speech.spans[0][0] < seconds < speech.spans[0][1] + HANGOVER_S
    check_stopped_run(out, seconds, segments=1)
    assert load_session(rec).meta["complete"] is True


# -- until_stopped, without models --------------------------------------------------------------------


def test_until_stopped_ends_a_source_that_went_quiet():
    closed = threading.Event()

    async def stalled():  # two items, then a device that never delivers again
        try:
            yield 1
            yield 2
            await asyncio.Event().wait()
        finally:
            closed.set()

    async def main() -> tuple[list[int], float]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, stop.set)
        t0 = time.monotonic()
        async with aclosing(until_stopped(stalled(), stop)) as items:
            got = [item async for item in items]
        return got, time.monotonic() - t0

    got, elapsed = asyncio.run(asyncio.wait_for(main(), 10))
    assert got == [1, 2] and closed.is_set() and 0.15 < elapsed < 1.0


def test_until_stopped_passes_everything_when_not_stopped():
    async def main() -> list[int]:
        async def numbers():
            for k in range(50):
                yield k
                await asyncio.sleep(0)
        return [k async for k in until_stopped(numbers(), asyncio.Event())]

    assert asyncio.run(main()) == list(range(50))
