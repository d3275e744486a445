"""Sources: files decoded with real PyAV, microphone and camera through fakes of their device objects."""
from __future__ import annotations

import asyncio
import builtins
import threading
import time
import wave
from contextlib import aclosing
from pathlib import Path

import av
import numpy as np
import pytest

from fdrl.audio import SAMPLE_RATE, Resampler, decode_audio
from fdrl.errors import UserError
from stream.sources import (AudioChunk, Bridge, CameraSource, ChunkClock, ChunkSource, FileSource, MicrophoneSource,
                            SourceLost, VideoFrame, list_devices, microphone, on_thread)


def run(coro):
    """Run a test coroutine; a hang fails the test instead of stalling the suite."""
    return asyncio.run(asyncio.wait_for(coro, 20))


async def collect(source, limit: int | None = None) -> list:
    out = []
    async with aclosing(aiter(source)) as items:
        async for item in items:
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
    return out


def threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


async def no_threads_left(prefix: str) -> bool:
    for _ in range(100):  # allow the loop's async-generator finaliser to run
        if not threads_named(prefix):
            return True
        await asyncio.sleep(0.01)
    return False


# -- fixtures: media files generated here ----------------------------------------------------------


def write_wav(path: Path, audio: np.ndarray, rate: int) -> Path:
    """int16 WAV; `audio` is (n,) or (n, channels) float."""
    frames = audio if audio.ndim == 2 else audio[:, None]
    with wave.open(str(path), "wb") as f:
        f.setnchannels(frames.shape[1])
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(frames, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def sine(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_mp4(path: Path, seconds: float = 1.0, fps: int = 10, audio: bool = True) -> Path:
    """A tiny mp4: frame i is a flat grey of level 20 * i, plus (optionally) a 440 Hz AAC track."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=SAMPLE_RATE) if audio else None
        if a is not None:
            a.layout = "mono"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="bgr24")
            frame.pts = i
            c.mux(v.encode(frame))
        c.mux(v.encode())
        if a is not None:
            x = sine(seconds, SAMPLE_RATE, amp=0.3)
            for k in range(0, len(x), 1024):
                frame = av.AudioFrame.from_ndarray(x[None, k:k + 1024], format="flt", layout="mono")
                frame.sample_rate, frame.pts = SAMPLE_RATE, k
                c.mux(a.encode(frame))
            c.mux(a.encode())
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    stereo = np.stack([sine(1.05, 44100), sine(1.05, 44100, freq=220)], axis=1)
    return {
        "wav44": write_wav(d / "stereo44.wav", stereo, 44100),
        "short": write_wav(d / "short.wav", sine(0.5, SAMPLE_RATE), SAMPLE_RATE),
        "long": write_wav(d / "long.wav", sine(30.0, SAMPLE_RATE), SAMPLE_RATE),
        "mp4": make_mp4(d / "av.mp4"),
        "silent_mp4": make_mp4(d / "silent.mp4", audio=False),
        "text": (d / "notes.txt").write_text("not media") and d / "notes.txt",
    }


# -- FileSource ------------------------------------------------------------------------------------


def test_file_audio_chunks_times_and_samples(media):
    items = run(collect(FileSource(media["wav44"])))
    assert all(isinstance(i, AudioChunk) for i in items)
    assert [round(i.t, 6) for i in items] == [round(0.1 * k, 6) for k in range(len(items))]
    assert all(len(i.samples) == 1600 for i in items[:-1]) and 0 < len(items[-1].samples) <= 1600
    audio = np.concatenate([i.samples for i in items])
    assert audio.dtype == np.float32 and abs(len(audio) - 1.05 * SAMPLE_RATE) <= 32
    # Same conversion as the training path (resample each channel, then average).
    expected = decode_audio(media["wav44"])
    assert len(audio) == len(expected)
    np.testing.assert_allclose(audio, expected, atol=1e-6)


def test_fast_mode_is_deterministic(media):
    a = run(collect(FileSource(media["mp4"], media["mp4"])))
    b = run(collect(FileSource(media["mp4"], media["mp4"])))
    assert [(type(x), x.t) for x in a] == [(type(x), x.t) for x in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(getattr(x, "samples", getattr(x, "image", None)),
                                      getattr(y, "samples", getattr(y, "image", None)))


def test_mp4_interleaves_audio_and_video_in_time_order(media):
    src = FileSource(media["mp4"], media["mp4"])
    assert src.has_audio and src.has_video
    items = run(collect(src))
    times = [i.t for i in items]
    assert times == sorted(times)
    frames = [i for i in items if isinstance(i, VideoFrame)]
    assert [round(f.t, 6) for f in frames] == [round(0.1 * k, 6) for k in range(10)]
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    levels = [float(f.image.mean()) for f in frames]
    assert all(abs(level - 20 * k) < 12 for k, level in enumerate(levels))  # the right frame at the right time
    audio = np.concatenate([i.samples for i in items if isinstance(i, AudioChunk)])
    assert abs(len(audio) - SAMPLE_RATE) < 1100  # AAC adds up to one 1024-sample priming frame


def test_video_fps_limit(media):
    items = run(collect(FileSource(None, media["mp4"], video_fps_limit=5)))
    assert [round(i.t, 6) for i in items] == [0.0, 0.2, 0.4, 0.6, 0.8]


def test_video_without_audio(media):
    src = FileSource(media["silent_mp4"], media["silent_mp4"])
    assert not src.has_audio and src.has_video
    items = run(collect(src))
    assert len(items) == 10 and all(isinstance(i, VideoFrame) for i in items)
    with pytest.raises(UserError, match="silent.mp4"):
        FileSource(media["silent_mp4"])  # audio asked for, none there, no video asked for


def test_file_errors_name_the_file(media, tmp_path):
    with pytest.raises(UserError, match="file not found: .*missing.wav"):
        FileSource(tmp_path / "missing.wav")
    with pytest.raises(UserError, match="notes.txt"):
        FileSource(media["text"])
    with pytest.raises(UserError, match="pace"):
        FileSource(media["short"], pace="slow")  # type: ignore[arg-type]


def test_realtime_pacing_roughly_follows_time(media):
    async def main() -> list[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        seen = []
        async for item in FileSource(media["short"], pace="realtime"):
            seen.append((item.t, loop.time()))
        return seen

    seen = run(main())
    first = seen[0][1]
    assert seen[-1][0] == pytest.approx(0.4)
    assert all(wall - first >= t - 0.02 for t, wall in seen)       # never early
    assert seen[-1][1] - first < seen[-1][0] + 0.5                  # and not much late


def test_cancelling_the_consumer_stops_the_decoder(media):
    async def main() -> None:
        got = []

        async def consume(pace: str) -> None:
            async for item in FileSource(media["long"], pace=pace, chunk_ms=20):
                got.append(item)
                await asyncio.sleep(0.01)

        for pace in ("fast", "realtime"):
            task = asyncio.create_task(consume(pace))
            await asyncio.sleep(0.2)
            assert threads_named("fdrl-file-decoder")  # decoding is running on its own thread
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await no_threads_left("fdrl-file-decoder")
        assert got

    run(main())


def test_breaking_out_early_closes_the_file(media):
    async def main() -> None:
        items = await collect(FileSource(media["long"]), limit=3)
        assert len(items) == 3
        assert await no_threads_left("fdrl-file-decoder")

    run(main())


# -- microphone ------------------------------------------------------------------------------------


class FakeInputStream:
    """Stands in for sounddevice.InputStream: calls back from its own thread, reusing one buffer."""

    def __init__(self, signal: np.ndarray, overflow_blocks: set[int] = frozenset(), interval: float = 0.0, **kw):
        self.signal, self.overflow_blocks, self.interval = signal, overflow_blocks, interval
        self.kw = kw
        self.callback = kw["callback"]
        self.blocksize = kw["blocksize"]
        self.running = threading.Event()
        self.finished = threading.Event()
        self.closed = False

    def start(self) -> None:
        self.running.set()
        threading.Thread(target=self._run, name="fake-portaudio", daemon=True).start()

    def _run(self) -> None:
        buf = np.empty((self.blocksize, self.signal.shape[1]), np.float32)
        for i, k in enumerate(range(0, len(self.signal) - self.blocksize + 1, self.blocksize)):
            if not self.running.is_set():
                break
            buf[:] = self.signal[k:k + self.blocksize]
            self.callback(buf, self.blocksize, None, "input overflow" if i in self.overflow_blocks else "")
            buf[:] = 0  # PortAudio reuses the buffer
            time.sleep(self.interval)
        self.finished.set()

    def stop(self) -> None:
        self.running.clear()

    def close(self) -> None:
        self.closed = True


def stereo_44k(seconds: float) -> np.ndarray:
    return np.stack([sine(seconds, 44100), sine(seconds, 44100, freq=220)], axis=1)


def test_microphone_resamples_and_counts_overflows():
    signal = stereo_44k(0.6)  # 20 blocks of 30 ms at 44.1 kHz
    streams = []

    def factory(**kw):
        streams.append(FakeInputStream(signal, overflow_blocks={5, 9}, **kw))
        return streams[-1]

    mic = MicrophoneSource(sample_rate=44100, channels=2, block_ms=30, stream_factory=factory)
    # Block-wise resampling must equal resampling the whole mono signal at once (no seams).
    expected = Resampler(44100)(signal.mean(axis=1))

    async def main() -> list[AudioChunk]:
        out: list[AudioChunk] = []
        async with aclosing(aiter(mic)) as chunks:
            async for chunk in chunks:
                out.append(chunk)
                if sum(len(c.samples) for c in out) >= len(expected):
                    break
        return out

    chunks = run(main())
    stream = streams[0]
    assert stream.kw["samplerate"] == 44100 and stream.kw["channels"] == 2 and stream.kw["blocksize"] == 1323
    assert stream.closed and not stream.running.is_set()
    assert mic.overflows == 2 and mic.dropped_s == 0.0
    audio = np.concatenate([c.samples for c in chunks])
    t = 0.0
    for c in chunks:  # contiguous, sample-counted times
        assert c.t == pytest.approx(t)
        t += len(c.samples) / SAMPLE_RATE
    assert len(audio) == len(expected) and abs(len(audio) - 0.6 * SAMPLE_RATE) < 20
    np.testing.assert_allclose(audio, expected, atol=1e-5)


def test_microphone_drops_oldest_when_consumer_is_slow():
    signal = stereo_44k(0.6)
    streams = []

    def factory(**kw):
        streams.append(FakeInputStream(signal, interval=0.005, **kw))
        return streams[-1]

    mic = MicrophoneSource(sample_rate=44100, channels=2, queue_size=3, stream_factory=factory)

    async def main() -> list[AudioChunk]:
        out: list[AudioChunk] = []
        async with aclosing(aiter(mic)) as chunks:
            out.append(await anext(chunks))
            while not streams[0].finished.is_set():  # the consumer stalls while the device keeps going
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            while mic.queue_depth():
                out.append(await anext(chunks))
        return out

    chunks = run(main())
    total = sum(len(c.samples) for c in chunks) / SAMPLE_RATE + mic.dropped_s
    assert len(chunks) == 4  # the first, then the newest three
    assert mic.dropped_s > 0.3 and total == pytest.approx(0.6, abs=0.01)
    last = chunks[-1]
    assert last.t + len(last.samples) / SAMPLE_RATE == pytest.approx(0.6, abs=0.01)  # times stay true


def test_bridge_drop_oldest_accounting():
    async def main() -> None:
        q = Bridge(2, when_full="drop_oldest", weight=lambda chunk: chunk.duration)
        for k in range(5):
            assert q.put(AudioChunk(0.1 * k, np.zeros(1600, np.float32)))
        assert q.qsize() == 2 and q.dropped == 3 and q.dropped_weight == pytest.approx(0.3)
        assert (await anext(q)).t == pytest.approx(0.3)
        q.close()
        assert not q.put(AudioChunk(0.5, np.zeros(1600, np.float32)))  # the producer is told to stop
        with pytest.raises(StopAsyncIteration):
            await anext(q)

    run(main())


def test_bridge_wait_holds_the_producer_and_close_wakes_it():
    async def main() -> None:
        q: Bridge[int] = Bridge(2, when_full="wait")
        put: list[bool] = []
        producer = threading.Thread(target=lambda: put.extend(q.put(k) for k in range(4)))
        producer.start()
        assert await anext(q) == 0
        await asyncio.sleep(0.05)
        assert q.qsize() == 2 and producer.is_alive()  # 1 and 2 wait; 3 waits for room
        q.close()  # wakes the waiting producer, whose put fails
        await asyncio.to_thread(producer.join, 5)
        assert put == [True, True, True, False] and q.dropped == 0

    run(main())


def test_bridge_hands_a_producer_error_over_after_its_items():
    def produce(stop: threading.Event):
        yield 1
        yield 2
        raise OSError("disk gone")

    async def main() -> list[int]:
        got: list[int] = []
        with pytest.raises(OSError, match="disk gone"):
            async for item in on_thread(produce, Bridge(8, when_full="wait"), name="fdrl-test-producer"):
                got.append(item)
        assert await no_threads_left("fdrl-test-producer")
        return got

    assert run(main()) == [1, 2]


def test_chunk_clock_mono_16k_passthrough_and_epoch():
    clock = ChunkClock(SAMPLE_RATE, t0=2.0)
    a = clock(np.ones((480, 1), np.float32))
    b = clock(np.ones(160, np.float32))
    assert (a.t, len(a.samples), b.t, len(b.samples)) == (2.0, 480, 2.03, 160)
    assert clock.flush() is None


def test_microphone_epoch_offsets_times():
    signal = stereo_44k(0.1)
    mic = MicrophoneSource(sample_rate=44100, channels=2, stream_factory=lambda **kw: FakeInputStream(signal, **kw),
                           epoch=time.monotonic() - 5.0)
    (chunk,) = run(collect(mic, limit=1))
    assert 5.0 <= chunk.t < 5.5


def test_microphone_open_failure_is_a_user_error():
    def broken(**kw):
        raise RuntimeError("Device unavailable [PaErrorCode -9985]")

    with pytest.raises(UserError, match="device 3 could not be opened.*fdrl devices"):
        run(collect(MicrophoneSource(device=3, stream_factory=broken)))


class FakeSounddevice:
    class PortAudioError(Exception):
        pass

    class default:
        device = (1, 2)

    def __init__(self, devices: list[dict]):
        self.devices = devices

    def query_devices(self, device=None, kind=None):
        if device is None and kind is None:
            return self.devices
        matches = [d for i, d in enumerate(self.devices)
                   if (device == i or (isinstance(device, str) and device in d["name"]) or device is None)
                   and d["max_input_channels"] > 0]
        if not matches:
            raise ValueError(f"No input device matching {device!r}")
        return matches[0]

    def check_input_settings(self, **kw):
        pass

    def InputStream(self, **kw):  # noqa: N802 - mirrors sounddevice
        return FakeInputStream(np.zeros((0, 1), np.float32), **kw)


DEVICES = [
    {"name": "HDMI out", "max_input_channels": 0, "default_samplerate": 48000.0},
    {"name": "USB mic", "max_input_channels": 1, "default_samplerate": 48000.0},
    {"name": "Webcam audio", "max_input_channels": 2, "default_samplerate": 44100.0},
]


def test_microphone_bad_device_names_it(monkeypatch):
    monkeypatch.setattr(microphone, "import_sounddevice", lambda: FakeSounddevice(DEVICES))
    with pytest.raises(UserError, match="'Blue Yeti' not found.*fdrl devices"):
        MicrophoneSource(device="Blue Yeti")
    mic = MicrophoneSource(device="USB")
    assert mic.sample_rate == 48000 and mic.block_frames == 1440  # the device's own rate


def test_missing_portaudio_is_a_user_error(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(UserError, match=r"PortAudio library not found: install it \(Debian/Ubuntu: sudo apt-get install libportaudio2\)"):
        MicrophoneSource()
    with pytest.raises(UserError, match="PortAudio"):
        list_devices()


# -- camera ----------------------------------------------------------------------------------------


class FakeCapture:
    """Stands in for cv2.VideoCapture: frame k is filled with k; fails every read after `frames`."""

    def __init__(self, opened: bool = True, frames: int | None = None, interval: float = 0.005):
        self.opened, self.frames, self.interval = opened, frames, interval
        self.count = 0
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 - mirrors OpenCV
        return self.opened

    def read(self):
        time.sleep(self.interval)
        if self.frames is not None and self.count >= self.frames:
            return False, None
        self.count += 1
        return True, np.full((4, 4, 3), self.count % 256, np.uint8)

    def release(self) -> None:
        self.released = True


def test_camera_that_does_not_open():
    cam = CameraSource(0, capture_factory=lambda i: FakeCapture(opened=False))
    with pytest.raises(UserError, match=r"^camera 0 could not be opened: check the device or pass --no-video$"):
        run(collect(cam))


def test_camera_keeps_latest_frame_and_counts_drops():
    capture = FakeCapture(interval=0.005)
    cam = CameraSource(0, fps=1000, capture_factory=lambda i: capture)

    async def main() -> list[VideoFrame]:
        out = []
        async with aclosing(aiter(cam)) as frames:
            async for frame in frames:
                out.append(frame)
                if len(out) == 5:
                    break
                await asyncio.sleep(0.05)  # a slow consumer
        return out

    frames = run(main())
    counters = [int(f.image[0, 0, 0]) for f in frames]
    assert counters == sorted(counters) and counters[-1] - counters[0] >= 12  # skipped ahead, never stale
    assert cam.dropped >= 8 and capture.released and not cam.lost
    assert all(b.t > a.t for a, b in zip(frames, frames[1:]))


def test_camera_fps_limit():
    cam = CameraSource(0, fps=10, capture_factory=lambda i: FakeCapture(interval=0.005))

    async def main() -> list[VideoFrame]:
        out = []
        async with aclosing(aiter(cam)) as frames:
            start = time.monotonic()
            async for frame in frames:
                out.append(frame)
                if time.monotonic() - start > 0.55:
                    break
        return out

    frames = run(main())
    assert 4 <= len(frames) <= 7
    gaps = np.diff([f.t for f in frames])
    assert np.all(gaps > 0.07) and cam.dropped == 0


def test_camera_lost_ends_iteration_with_a_source_lost_item():
    capture = FakeCapture(frames=3, interval=0.001)
    cam = CameraSource(0, fps=1000, capture_factory=lambda i: capture, max_failures=5)

    async def main() -> list:
        items = await collect(cam)
        assert await no_threads_left("fdrl-camera")
        return items

    *frames, last = run(main())
    assert 1 <= len(frames) <= 3 and all(isinstance(f, VideoFrame) for f in frames)
    assert isinstance(last, SourceLost) and last.source == "camera" and last.t > frames[-1].t
    assert "camera 0 stopped" in last.message and "audio only" in last.message
    assert cam.lost and capture.released


def test_camera_cancel_releases_device():
    capture = FakeCapture(interval=0.01)

    async def main() -> None:
        async def consume() -> None:
            async for _ in CameraSource(0, fps=30, capture_factory=lambda i: capture):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        assert threads_named("fdrl-camera")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await no_threads_left("fdrl-camera")

    run(main())
    assert capture.released


# -- bring your own source, devices ----------------------------------------------------------------


def test_chunk_source_from_sync_blocks_and_frames():
    signal = stereo_44k(0.5)
    blocks = [signal[k:k + 1000] for k in range(0, len(signal), 1000)]  # odd, uneven block sizes
    image = np.zeros((4, 4, 3), np.uint8)
    src = ChunkSource(audio=blocks, sample_rate=44100, video=[(0.0, image), VideoFrame(0.5, image)])
    items = run(collect(src))
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    frames = [i for i in items if isinstance(i, VideoFrame)]
    assert [f.t for f in frames] == [0.0, 0.5]
    audio = np.concatenate([c.samples for c in chunks])
    assert len(audio) == round(0.5 * SAMPLE_RATE)  # flushed at the end: every sample accounted for
    assert [c.t for c in chunks] == pytest.approx(np.cumsum([0] + [len(c.samples) for c in chunks[:-1]]) / SAMPLE_RATE)


def test_chunk_source_async_input_and_errors():
    async def blocks():
        for _ in range(3):
            yield np.zeros(1600, np.float32)

    items = run(collect(ChunkSource(audio=blocks())))
    assert [(i.t, len(i.samples)) for i in items] == [(0.0, 1600), (0.1, 1600), (0.2, 1600)]

    async def broken():
        yield np.zeros(160, np.float32)
        raise ValueError("sensor unplugged")

    with pytest.raises(ValueError, match="sensor unplugged"):
        run(collect(ChunkSource(audio=broken())))
    with pytest.raises(UserError):
        ChunkSource()


def test_list_devices_with_fakes():
    cams = {0: FakeCapture(), 1: FakeCapture(opened=False)}
    out = list_devices(sd=FakeSounddevice(DEVICES), capture_factory=lambda i: cams.get(i, FakeCapture(opened=False)))
    assert out == [
        {"kind": "audio", "index": 1, "name": "USB mic", "channels": 1, "sample_rate": 48000.0, "default": True},
        {"kind": "audio", "index": 2, "name": "Webcam audio", "channels": 2, "sample_rate": 44100.0, "default": False},
        {"kind": "camera", "index": 0, "name": "camera 0"},
    ]
    assert cams[0].released and cams[1].released


# -- FileSource on broken audio: the same one-line errors as fdrl.audio.decode_audio -------------------


def float_wav(path: Path, audio: np.ndarray) -> Path:
    """A 32-bit float WAV at 16 kHz (the wave module writes integer PCM only)."""
    with av.open(str(path), "w", format="wav") as c:
        s = c.add_stream("pcm_f32le", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        c.mux(s.encode(frame))
        c.mux(s.encode())
    return path


def with_header_field(path: Path, src: Path, offset: int, value: int) -> Path:
    """`src` with the 16-bit little-endian WAV header field at `offset` set to `value`."""
    data = bytearray(src.read_bytes())
    data[offset:offset + 2] = value.to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


def test_unusable_audio_tracks_are_named_when_the_source_is_made(media, tmp_path):
    """FFmpeg lists these tracks, but none can yield a sample: FileSource says so before anything runs."""
    empty_flac = tmp_path / "empty.flac"
    empty_flac.write_bytes(b"")  # FFmpeg opens it as a 0 Hz, 0-channel FLAC stream
    cases = {
        empty_flac: "0 Hz, 0 channels",
        with_header_field(tmp_path / "no-channels.wav", media["short"], 22, 0): "16000 Hz, 0 channels",
        with_header_field(tmp_path / "format-99.wav", media["short"], 20, 99): "no decoder for it",
    }
    for path, detail in cases.items():
        with pytest.raises(UserError) as info:
            FileSource(path)
        message = str(info.value)
        assert str(path) in message and "is corrupt, empty or in an unknown codec" in message, message
        assert detail in message and "\n" not in message, message


def test_an_audio_track_without_samples_is_an_error(tmp_path):
    path = write_wav(tmp_path / "no-samples.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    src = FileSource(path)  # a well-formed header: the track looks fine until it is read
    assert src.has_audio
    with pytest.raises(UserError, match=r"no-samples\.wav contains no audio samples"):
        run(collect(src))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_an_error_not_passed_on(tmp_path, bad):
    audio = sine(1.0, SAMPLE_RATE)
    audio[12000] = bad  # in the middle of the file: chunks before it have gone out already
    path = float_wav(tmp_path / "broken-float.wav", audio)
    chunks: list[AudioChunk] = []

    async def main() -> None:
        async for item in FileSource(path, chunk_ms=100):
            chunks.append(item)

    with pytest.raises(UserError, match=r"broken-float\.wav contains NaN or infinite samples"):
        run(main())
    assert all(np.isfinite(c.samples).all() for c in chunks)  # nothing non-finite got out
    good = float_wav(tmp_path / "good-float.wav", sine(1.0, SAMPLE_RATE))  # the same file, finite: decodes whole
    assert sum(len(c.samples) for c in run(collect(FileSource(good)))) == SAMPLE_RATE
