"""Whole sessions: merging sources, cancelling mid-stream, a live run on fake devices recorded and replayed, the CLI, the library example."""
from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import threading
import time
import wave
from contextlib import aclosing
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fdrl.audio import SAMPLE_RATE, Resampler, decode_audio
from fdrl.config import PROJECT_ROOT
from fdrl.errors import UserError
from stream.cli import main
from stream.events import FaceUpdate, Stats
from stream.pipeline import Recognizer
from stream.record import load_session, read_events
from stream.session import SessionOptions, run_session
from stream.sources import CameraSource, FileSource, MicrophoneSource, list_devices, merge
from tests.conftest import MIN_RECALL, word_recall
from tests.test_pipeline import THREE, Speech, fdrl_threads, finals, make_config, run, speech_file
from tests.test_sources import FakeInputStream, make_mp4


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Speech:
    return speech_file(tmp_path_factory.mktemp("speech") / "three.wav", THREE)


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory) -> Speech:
    return speech_file(tmp_path_factory.mktemp("speech") / "long.wav", THREE, repeat=3)


def quiet() -> Console:
    return Console(file=io.StringIO())


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- merging sources ---------------------------------------------------------------------------------


async def counting(tag: str, closed: list[str], n: int | None = None, fail: bool = False):
    """Items `(tag, k)` every millisecond, `n` of them (None: forever); records its own closing."""
    try:
        k = 0
        while n is None or k < n:
            yield tag, k
            k += 1
            await asyncio.sleep(0.001)
        if fail:
            raise OSError(f"{tag} unplugged")
    finally:
        closed.append(tag)


def test_merge_interleaves_and_ends_with_the_last_source():
    closed: list[str] = []

    async def main() -> list:
        return [item async for item in merge(counting("mic", closed, 30), counting("cam", closed, 5))]

    items = run(main(), timeout=10)
    assert sorted(items) == sorted([("mic", k) for k in range(30)] + [("cam", k) for k in range(5)])
    assert [k for tag, k in items if tag == "mic"] == list(range(30))  # each source keeps its order
    assert sorted(closed) == ["cam", "mic"]


def test_merge_error_in_one_source_ends_all():
    closed: list[str] = []

    async def main() -> None:
        with pytest.raises(OSError, match="cam unplugged"):
            async for _ in merge(counting("mic", closed), counting("cam", closed, 3, fail=True)):
                pass
        assert sorted(closed) == ["cam", "mic"]

    run(main(), timeout=10)


def test_closing_merge_with_a_full_queue_stops_every_source():
    """A consumer that stops reading, then closes: the sources' pumps must not wait on the full queue."""
    closed: list[str] = []

    async def main() -> None:
        merged = merge(counting("mic", closed), counting("cam", closed))
        await anext(merged)
        await asyncio.sleep(0.1)  # a busy consumer: the queue fills up
        await asyncio.wait_for(merged.aclose(), 5)
        assert sorted(closed) == ["cam", "mic"]  # closed at once, not when collected

    run(main(), timeout=10)


# -- cancelling a session ---------------------------------------------------------------------------


def test_cancelled_session_leaves_valid_files(long_speech, tiny_checkpoint, tmp_path):
    cfg = make_config(tmp_path)
    out, rec = tmp_path / "out.jsonl", tmp_path / "rec"
    options = SessionOptions(jsonl=out, record=rec, checkpoint=tiny_checkpoint)
    before = fdrl_threads()

    async def session() -> None:
        source = FileSource(long_speech.path, pace="realtime")
        task = asyncio.create_task(run_session(cfg, source, options, console=quiet()))
        # Cancel once the first utterance is on disk: mid-stream, with every file open.
        while not (out.exists() and '"final": true' in out.read_text(encoding="utf-8")):
            assert not task.done()
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fdrl_threads() <= before  # the decoder thread stopped with the session

    run(session(), timeout=60)
    for path in (out, rec / "events.jsonl"):
        lines = json_lines(path)  # every line is complete JSON
        assert lines and all("type" in line for line in lines)
        assert any(line["type"] == "utterance" and line["final"] for line in lines)
    with wave.open(str(rec / "audio.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
        seconds = w.getnframes() / SAMPLE_RATE
    assert 2.0 < seconds < long_speech.duration - 3  # stopped mid-stream, at about real time
    session = load_session(rec)
    assert session.meta["complete"] is True and session.meta["audio_s"] == pytest.approx(seconds, abs=0.01)
    assert session.video is None


# -- live on fake devices, recorded, replayed --------------------------------------------------------


def stereo_44k(audio: np.ndarray) -> np.ndarray:
    """16 kHz mono -> 44.1 kHz stereo (linear interpolation; the right channel a little quieter)."""
    n = len(audio) * 44100 // SAMPLE_RATE
    mono = np.interp(np.arange(n) * SAMPLE_RATE / 44100, np.arange(len(audio)), audio).astype(np.float32)
    return np.stack([mono, 0.8 * mono], axis=1)


class FakeCamera:
    """Stands in for cv2.VideoCapture: a synthetic moving picture every 10 ms until `off` is set."""

    def __init__(self, off: threading.Event) -> None:
        self.off, self.count, self.released = off, 0, False

    def isOpened(self) -> bool:  # noqa: N802 - mirrors OpenCV
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(0.01)
        if self.off.is_set():
            return False, None  # unplugged: CameraSource ends after a few failed reads
        self.count += 1
        image = np.full((120, 160, 3), 60, np.uint8)
        image[:, : (4 * self.count) % 160] = (200, 120, 40)
        return True, image

    def release(self) -> None:
        self.released = True


async def until(source, samples: int, done: threading.Event):
    """`source`'s chunks until `samples` have come (the fake device played its signal), then end."""
    got = 0
    async with aclosing(aiter(source)) as chunks:
        async for chunk in chunks:
            yield chunk
            got += len(chunk.samples)
            if got >= samples:
                break
    done.set()


def test_live_session_on_fake_devices_records_and_replays(speech, tiny_checkpoint, tmp_path):
    cfg = make_config(tmp_path)
    block = 44100 * 30 // 1000
    signal = stereo_44k(decode_audio(speech.path))
    signal = signal[: len(signal) // block * block]  # the fake device plays whole blocks
    samples = len(Resampler(44100)(signal.mean(axis=1)))
    mic = MicrophoneSource(sample_rate=44100, channels=2, block_ms=30, queue_size=10_000,
                           stream_factory=lambda **kw: FakeInputStream(signal, interval=0.008, **kw))  # ~4x real time
    mic_done = threading.Event()
    camera = FakeCamera(mic_done)
    source = merge(until(mic, samples, mic_done), CameraSource(0, fps=10, capture_factory=lambda i: camera))
    rec, out = tmp_path / "rec", tmp_path / "live.jsonl"
    options = SessionOptions(live=True, record=rec, jsonl=out, checkpoint=tiny_checkpoint)

    stats = run(run_session(cfg, source, options, console=quiet()), timeout=90)

    events = read_events(out)
    live = finals(events)
    assert [u.index for u in live] == [0, 1, 2]
    assert all(word_recall(keys, u.text) >= MIN_RECALL for u, keys in zip(live, speech.keys)), [u.text for u in live]
    assert all("end_to_label" in u.timings for u in live)  # live runs measure latency
    faces = [e for e in events if isinstance(e, FaceUpdate)]
    assert len(faces) >= 3 and all(f.label is None for f in faces)  # no face in a synthetic picture
    assert isinstance(stats, Stats) and stats.audio_dropped_s == 0 and stats.overflows == 0
    assert stats.segments_closed == stats.utterances + stats.errors + stats.no_speech == 3
    assert camera.released

    session = load_session(rec)
    assert session.meta["complete"] and session.video is not None and session.meta["video_frames"] >= 3
    assert session.meta["audio_s"] == pytest.approx(samples / SAMPLE_RATE, abs=0.01)

    async def replay() -> list:
        async with Recognizer(cfg, tiny_checkpoint) as r:
            return [e async for e in r.run(FileSource(session.audio, session.video))]

    replayed = finals(run(replay()))
    assert [u.text for u in replayed] == [u.text for u in live]
    assert [(u.start, u.end) for u in replayed] == [(u.start, u.end) for u in live]


# -- the command line -------------------------------------------------------------------------------


def cli(*args: str, cache: Path) -> int:
    return main(["--set", f"paths.cache_dir='{cache}'", *args])


def test_cli_replay_writes_jsonl_and_plot(speech, tiny_checkpoint, tmp_path, capsys):
    out, png = tmp_path / "out.jsonl", tmp_path / "timeline.png"
    code = cli("replay", str(speech.path), "--jsonl", str(out), "--plot", str(png),
               "--checkpoint", str(tiny_checkpoint), cache=tmp_path / "cache")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = json_lines(out)
    assert all("type" in line for line in lines)
    utterances = [line for line in lines if line["type"] == "utterance"]
    assert utterances and all({"start", "end", "text", "label", "scores", "final"} <= set(u) for u in utterances)
    final = [u for u in utterances if u["final"]]
    assert len(final) == 3 and all(word_recall(keys, u["text"]) >= MIN_RECALL for u, keys in zip(final, speech.keys))
    assert lines[-1]["type"] == "stats" and lines[-1]["utterances"] == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The summary is written once: by the plain view at the end of stdout when that is not a
    # terminal (as here), by the CLI on stderr after the live view otherwise.
    both = captured.out + captured.err
    assert sum(line.startswith("stats [") for line in both.splitlines()) == 1
    assert captured.out.strip().splitlines()[-1].startswith("stats [0] at ")
    assert "Traceback" not in both


@pytest.fixture(scope="module")
def bad_media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "corrupt.wav").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    (d / "empty.wav").write_bytes(b"")
    mp4 = make_mp4(d / "whole.mp4", seconds=1.0)
    (d / "truncated.mp4").write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    make_mp4(d / "silent.mp4", audio=False)
    return {**{p.stem: p for p in d.iterdir()}, "missing": d / "missing.wav"}


@pytest.mark.parametrize("name, flags", [("corrupt", ()), ("empty", ()), ("truncated", ()),
                                         ("silent", ("--no-video",)), ("missing", ())])
def test_cli_replay_bad_input_is_one_line(bad_media, tmp_path, capsys, name, flags):
    path = bad_media[name]
    code = cli("replay", str(path), *flags, cache=tmp_path / "cache")
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("fdrl: error: ") and len(captured.err.strip().splitlines()) == 1
    assert path.name in captured.err and "Traceback" not in captured.err + captured.out


def _has_real_input() -> bool:
    try:
        return any(d["kind"] == "audio" for d in list_devices(camera_indices=()))
    except UserError:
        return False


@pytest.mark.parametrize("flags", [("--no-video",), ()])
def test_cli_live_without_audio_input_is_one_line(tmp_path, capsys, flags):
    if _has_real_input():
        pytest.skip("this machine has a real audio input: `fdrl live` would start listening")
    code = cli("live", *flags, cache=tmp_path / "cache")
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "PortAudio" in err or "device" in err


def test_cli_devices(tmp_path, capsys):
    code = cli("devices", cache=tmp_path / "cache")
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    if code == 2:  # no PortAudio here
        assert len(captured.err.strip().splitlines()) == 1 and "PortAudio" in captured.err
    else:
        assert code == 0 and captured.out.strip()
        assert all(line.split()[0] in ("audio", "camera") or line == "no input devices found"
                   for line in captured.out.strip().splitlines())


# -- the library example ----------------------------------------------------------------------------


def test_library_example_runs(speech, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("library_example", PROJECT_ROOT / "examples" / "library.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    cfg = make_config(tmp_path)
    monkeypatch.setattr(example.config, "load", lambda: cfg)
    run(example.main(speech.path, tiny_checkpoint))
    lines = capsys.readouterr().out.splitlines()
    assert "FileSource" in lines[0] and "ChunkSource" in lines[4] and len(lines) == 8
    for section in (lines[1:4], lines[5:8]):  # the same three utterances either way
        assert all(word_recall(keys, line) >= MIN_RECALL for line, keys in zip(section, speech.keys)), section
    assert lines[1:4] == lines[5:8]


def test_cli_replay_of_a_video_file_uses_its_pictures(bad_media, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    code = cli("replay", str(bad_media["whole"]), "--jsonl", str(out), "--checkpoint", str(tiny_checkpoint),
               cache=tmp_path / "cache")
    assert code == 0, capsys.readouterr().err
    assert any(line["type"] == "face" for line in json_lines(out))
    code = cli("replay", str(bad_media["whole"]), "--no-video", "--jsonl", str(out),
               "--checkpoint", str(tiny_checkpoint), cache=tmp_path / "cache")
    assert code == 0 and not any(line["type"] == "face" for line in json_lines(out))


class _Counted:
    """An empty source that only carries drop counters, like a device source."""

    def __init__(self, **counters: float) -> None:
        self.__dict__.update(counters)

    def __aiter__(self) -> "_Counted":
        return self

    async def __anext__(self):
        raise StopAsyncIteration


def test_merge_sums_its_sources_drop_counters():
    merged = merge(_Counted(dropped_s=1.5, overflows=2), _Counted(dropped=7))
    assert (merged.dropped_s, merged.dropped, merged.overflows) == (1.5, 7, 2)


def test_stats_report_the_device_counters_under_wrappers(tiny_checkpoint, tmp_path):
    """The session wraps the device source (recording, stop handling): its counters must still reach Stats."""
    cfg = make_config(tmp_path)
    device = _Counted(dropped=5, overflows=3)

    async def wrapped():
        async for item in device:
            yield item

    async def main() -> Stats:
        async with Recognizer(cfg, tiny_checkpoint) as rec:
            events = [e async for e in rec.run(wrapped(), live=True, counters=device)]
        return [e for e in events if isinstance(e, Stats)][-1]

    stats = run(main())
    assert stats.frames_dropped == 5 and stats.overflows == 3
