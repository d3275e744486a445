"""Session recording: files valid after close, after cancellation, while open, and after a write error."""
from __future__ import annotations

import asyncio
import errno
import json
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from matplotlib.image import imread

from fdrl.errors import UserError
from stream.events import Error, FaceUpdate, Level, SpeechStarted, Stats, Utterance
from stream.plot import plot_timeline
from stream.record import JsonlWriter, RecordingError, SessionRecorder, load_session, read_events
from stream.ui import LABEL_COLOURS

SR = 16000
SCORES = {"neutral": 0.1, "happiness": 0.05, "sadness": 0.05, "anger": 0.7, "fear": 0.04, "disgust": 0.03,
          "surprise": 0.03}


def tone(seconds: float, t0: float = 0.0, freq: float = 220.0) -> np.ndarray:
    t = t0 + np.arange(round(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def frame(i: int, h: int = 120, w: int = 160) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : (i * 7) % w] = (255, 128, 0)  # a moving edge, so frames differ
    return img


def some_events() -> list:
    return [
        SpeechStarted("mic", 0.2),
        Level("mic", 0.3, -20.5, True),
        Utterance(stream="mic", index=0, start=0.2, end=1.4, text="", label="anger", scores=SCORES, final=False,
                  modalities=("audio",), timings={"model": 0.01}),
        Utterance(stream="mic", index=0, start=0.2, end=1.4, text="leave me alone", label="anger", scores=SCORES, final=True,
                  modalities=("audio", "text"), timings={"asr": 0.2, "end_to_label": 0.31}, face_label="fear"),
        FaceUpdate("cam", 1.0, "fear", {"fear": 0.6, "neutral": 0.4}, (10, 20, 50, 50)),
        Error("mic", 1.5, "décodage raté", "asr", (1.4, 1.5)),
        Stats(stream="mic", time=2.0, segments_closed=1, utterances=1, errors=1, no_speech=0, audio_dropped_s=0.0,
              frames_dropped=0, queue_depths={"asr": 0}, compute_ratio=0.4, overflows=0),
    ]


def read_wav(path: Path) -> tuple[tuple, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        return w.getparams(), np.frombuffer(w.readframes(w.getnframes()), "<i2")


def video_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [f.time for f in c.decode(video=0)]


def record_full(directory: Path) -> list:
    events = some_events()
    with SessionRecorder(directory, sample_rate=SR, video_fps=10, config={"model": {"fusion": "fdrl"}}) as rec:
        for k in range(20):  # 2 s of audio in 0.1 s chunks
            rec.write_audio(k * 0.1, tone(0.1, k * 0.1))
        for i in range(20):  # 10 fps with a little jitter: the pts follow t, not a fixed rate
            rec.write_frame(i * 0.1 + 0.013 * (i % 3), frame(i))
        for e in events:
            rec.write_event(e)
    return events


def test_full_session_round_trip(tmp_path):
    d = tmp_path / "session"
    events = record_full(d)

    params, pcm = read_wav(d / "audio.wav")
    assert (params.nchannels, params.sampwidth, params.framerate, params.nframes) == (1, 2, SR, 2 * SR)
    np.testing.assert_array_equal(pcm, np.round(tone(2.0) * 32767).astype(np.int16))

    times = video_times(d / "video.mp4")
    assert len(times) == 20
    assert all(b > a for a, b in zip(times, times[1:]))
    np.testing.assert_allclose(times, [i * 0.1 + 0.013 * (i % 3) for i in range(20)], atol=1e-3)

    assert read_events(d / "events.jsonl") == [e for e in events if not isinstance(e, Level)]
    session = load_session(d)
    assert (session.audio, session.video, session.events) == (d / "audio.wav", d / "video.mp4", d / "events.jsonl")
    meta = session.meta
    assert meta["complete"] is True and meta["sample_rate"] == SR and meta["video_fps"] == 10
    assert meta["audio_s"] == 2.0 and meta["video_frames"] == 20
    assert meta["config"] == {"model": {"fusion": "fdrl"}} and meta["version"] and "T" in meta["started"]


def test_audio_only_session_has_no_video(tmp_path):
    with SessionRecorder(tmp_path / "s") as rec:
        rec.write_audio(0.0, tone(0.5))
    assert not (tmp_path / "s" / "video.mp4").exists()
    assert load_session(tmp_path / "s").video is None


def test_audio_gaps_become_silence_on_the_stream_timeline(tmp_path):
    with SessionRecorder(tmp_path / "s") as rec:
        rec.write_audio(0.0, tone(0.1))
        rec.write_audio(0.1 + 0.002, tone(0.1))     # 2 ms clock jitter: appended, no padding
        rec.write_audio(0.5, np.full(1600, 2.0))   # 0.3 s dropped: padded; out-of-range samples clipped
        rec.write_audio(0.6, np.full(160, -1000, np.int16))  # int16 is written as-is
    _, pcm = read_wav(tmp_path / "s" / "audio.wav")
    assert len(pcm) == round(0.61 * SR)
    assert not pcm[3200:8000].any()
    assert (pcm[8000:9600] == 32767).all() and (pcm[9600:] == -1000).all()


def test_files_are_valid_while_the_recorder_is_still_open(tmp_path):
    """What a crash (no close, no flush) would leave behind."""
    d = tmp_path / "s"
    rec = SessionRecorder(d, video_fps=10)  # a keyframe / MP4 fragment every 20 frames
    try:
        rec.write_audio(0.0, tone(1.0))
        for i in range(25):
            rec.write_frame(i * 0.1, frame(i))
        rec.write_event(SpeechStarted("mic", 0.1))
        params, _ = read_wav(d / "audio.wav")
        assert params.nframes == SR
        assert read_events(d / "events.jsonl") == [SpeechStarted("mic", 0.1)]
        assert len(video_times(d / "video.mp4")) >= 20  # all but the open fragment
        assert json.loads((d / "session.json").read_text())["complete"] is False
    finally:
        rec.close()
    assert len(video_times(d / "video.mp4")) == 25


def test_cancelled_task_closing_in_finally_leaves_valid_files(tmp_path):
    d = tmp_path / "s"
    rec = SessionRecorder(d)

    async def record_forever() -> None:
        try:
            k = 0
            while True:
                rec.write_audio(k * 0.03, tone(0.03, k * 0.03))
                if k % 3 == 0:
                    rec.write_frame(k * 0.03, frame(k))
                k += 1
                await asyncio.sleep(0)
        finally:
            rec.close()

    async def main() -> None:
        task = asyncio.create_task(record_forever())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    rec.close()  # idempotent
    meta = load_session(d).meta
    params, _ = read_wav(d / "audio.wav")
    assert params.nframes > 0 and params.nframes == round(meta["audio_s"] * SR)
    assert len(video_times(d / "video.mp4")) == meta["video_frames"] > 0
    assert meta["complete"] is True
    with pytest.raises(RecordingError, match="closed"):
        rec.write_audio(10.0, tone(0.03))


def disk_full_after(file, n_ok: int) -> None:
    """Make `file.write` succeed n_ok times, then write half its data and fail like a full disk."""
    real_write, calls = file.write, 0

    def write(data):
        nonlocal calls
        calls += 1
        if calls <= n_ok:
            return real_write(data)
        real_write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    file.write = write


def test_disk_full_on_audio_raises_and_keeps_files_valid(tmp_path):
    d = tmp_path / "s"
    rec = SessionRecorder(d)
    rec.write_event(SpeechStarted("mic", 0.0))
    for k in range(5):
        rec.write_audio(k * 0.1, tone(0.1, k * 0.1))
    rec.write_frame(0.0, frame(0))
    disk_full_after(rec._audio._file, 0)
    with pytest.raises(RecordingError, match=r"audio\.wav: No space left on device \(free some disk space"):
        rec.write_audio(0.5, tone(0.1, 0.5))
    params, pcm = read_wav(d / "audio.wav")
    assert params.nframes == 5 * 1600 and (d / "audio.wav").stat().st_size == 44 + 2 * 5 * 1600
    np.testing.assert_array_equal(pcm, np.round(tone(0.5) * 32767).astype(np.int16))
    assert read_events(d / "events.jsonl") == [SpeechStarted("mic", 0.0)]
    assert len(video_times(d / "video.mp4")) == 1
    meta = load_session(d).meta
    assert meta["complete"] is False and "No space left" in meta["error"]
    with pytest.raises(RecordingError, match="after an error"):
        rec.write_event(SpeechStarted("mic", 1.0))
    rec.close()  # no-op after the failure


def test_disk_full_on_events_keeps_complete_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    with JsonlWriter(path) as writer:
        writer.write(SpeechStarted("mic", 1.0))
        writer.write(SpeechStarted("mic", 2.0))
        disk_full_after(writer._file, 0)
        with pytest.raises(RecordingError, match="events.jsonl: No space left"):
            writer.write(SpeechStarted("mic", 3.0))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["start"] for line in lines] == [1.0, 2.0]
    assert path.read_text().endswith("\n")


def test_jsonl_leaves_out_level_events_unless_asked(tmp_path):
    with JsonlWriter(tmp_path / "a.jsonl") as a, JsonlWriter(tmp_path / "b.jsonl", levels=True) as b:
        for w in (a, b):
            w.write(Level("mic", 0.1, -30.0, False))
            w.write(SpeechStarted("mic", 0.2))
    assert read_events(tmp_path / "a.jsonl") == [SpeechStarted("mic", 0.2)]
    assert read_events(tmp_path / "b.jsonl") == [Level("mic", 0.1, -30.0, False), SpeechStarted("mic", 0.2)]


def test_read_events_skips_only_a_truncated_last_line(tmp_path):
    good = json.dumps(SpeechStarted("mic", 1.0).to_json())
    path = tmp_path / "e.jsonl"
    path.write_text(good + "\n" + '{"type": "speech_sta')
    assert read_events(path) == [SpeechStarted("mic", 1.0)]
    path.write_text('{"type": "speech_sta\n' + good + "\n")
    with pytest.raises(UserError, match=r"e\.jsonl:1 is not valid JSON"):
        read_events(path)


def test_load_session_names_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="no such session folder"):
        load_session(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "audio.wav").write_bytes(b"")
    with pytest.raises(UserError, match="missing session.json, events.jsonl"):
        load_session(tmp_path / "half")


def test_recorder_refuses_to_overwrite_a_session(tmp_path):
    SessionRecorder(tmp_path / "s").close()
    with pytest.raises(UserError, match="already holds a recorded session"):
        SessionRecorder(tmp_path / "s")


def test_timeline_plot_from_recorded_jsonl(tmp_path):
    record_full(tmp_path / "s")
    second = Utterance(stream="mic", index=1, start=2.0, end=3.5, text="that is wonderful news", label="happiness",
                       scores={**SCORES, "anger": 0.0, "happiness": 0.9}, final=True, modalities=("audio", "text"),
                       timings={})
    rows = [json.loads(line) for line in (tmp_path / "s" / "events.jsonl").read_text().splitlines()]
    rows.append(second.to_json())
    png = plot_timeline(rows, tmp_path / "plots" / "timeline.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    pixels = (imread(png)[..., :3] * 255).round().astype(int)

    def has_colour(hex_colour: str) -> bool:
        rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
        return bool((np.abs(pixels - rgb).max(axis=-1) <= 2).sum() > 500)  # a bar, not just a legend swatch

    assert has_colour(LABEL_COLOURS["anger"]) and has_colour(LABEL_COLOURS["happiness"])
    assert not has_colour(LABEL_COLOURS["sadness"])


def test_timeline_plot_without_utterances(tmp_path):
    png = plot_timeline([Utterance(stream="mic", index=0, start=0, end=1, text="", label="anger", scores=SCORES, final=False,
                                   modalities=("audio",), timings={})], tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
