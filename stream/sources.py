"""Where audio and video come from: files, the microphone, the camera, or the caller's own chunks.

Every source is an async iterator of `AudioChunk` (float32 mono 16 kHz) and `VideoFrame` (BGR uint8)
items, each stamped `t` = seconds since the start of the stream. Audio times come from sample
counts and file video times from container timestamps, never from the wall clock, so a file gives
the same items on every run. Blocking work (decoding, PortAudio callbacks, `VideoCapture.read`)
lives on its own thread and reaches the event loop through a bounded hand-off; cancelling the
consumer stops that thread and releases the file or device. A live device that stops mid-stream
ends its iteration with a `SourceLost` item, so whoever merges it with others can carry on.
"""
from __future__ import annotations

import asyncio
import heapq
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import av
import numpy as np

from fdrl.audio import CONVERT_HINT, SAMPLE_RATE, Resampler, check_finite, no_samples, to_mono
from fdrl.errors import UserError
from fdrl.video import read_frames

PORTAUDIO_MISSING = "PortAudio library not found: install it (Debian/Ubuntu: sudo apt-get install libportaudio2)"

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class AudioChunk:
    t: float              # seconds since the start of the stream, of the first sample
    samples: np.ndarray   # float32 mono at SAMPLE_RATE

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True, eq=False)
class VideoFrame:
    t: float              # seconds since the start of the stream
    image: np.ndarray     # BGR uint8, height x width x 3


@dataclass(frozen=True)
class SourceLost:
    """The last item of a live source whose device stopped mid-stream (`source`, e.g. "camera").

    Not an error: the session carries on with its other sources, and the pipeline tells the user
    with a `Fallback` event carrying `message`.
    """

    t: float
    source: str
    message: str


Item = Union[AudioChunk, VideoFrame, SourceLost]


# -- audio conversion ------------------------------------------------------------------------------


class ChunkClock:
    """Turns device or user blocks (any rate, any channel count) into timed 16 kHz mono chunks."""

    def __init__(self, rate_in: int, t0: float = 0.0) -> None:
        # Resampler keeps state across blocks (no seams, no drift); 16 kHz passes straight through.
        self._resample = Resampler(rate_in) if rate_in != SAMPLE_RATE else None
        self._t0 = t0
        self.samples_out = 0

    def __call__(self, block: np.ndarray) -> AudioChunk | None:
        """`block` is (frames,) or (frames, channels); None while it is too short to yield a sample."""
        mono = to_mono(block)
        samples = self._resample(mono) if self._resample is not None else mono.copy()
        if samples.size == 0:
            return None
        return self._stamp(samples)

    def flush(self) -> AudioChunk | None:
        """End of stream: the last resampled samples (about a millisecond), if any."""
        if self._resample is None:
            return None
        samples = self._resample.flush()
        return self._stamp(samples) if samples.size else None

    def _stamp(self, samples: np.ndarray) -> AudioChunk:
        chunk = AudioChunk(self._t0 + self.samples_out / SAMPLE_RATE, samples)
        self.samples_out += samples.size
        return chunk


class DropOldestQueue:
    """A bounded hand-off of audio chunks that keeps the newest: a full queue drops its oldest chunk.

    A live microphone cannot wait for a slow consumer, and recent audio matters more than old.
    Dropped audio is counted in `dropped_s`. `put` may be called from any thread (PortAudio's):
    the chunks wait here, not in the event loop's callback queue, so even a loop that is blocked
    (a stalled terminal, a slow disk) holds at most `maxsize` of them. Create and `get` on the loop.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.dropped_s = 0.0
        self._items: deque[AudioChunk] = deque()
        self._lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._wake_pending = False  # one wake-up in the loop's queue at a time, however many puts

    def put(self, chunk: AudioChunk) -> None:
        with self._lock:
            if len(self._items) >= self.maxsize:
                self.dropped_s += self._items.popleft().duration
            self._items.append(chunk)
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop closed: nobody is listening any more
            pass

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._ready.set()

    async def get(self) -> AudioChunk:
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                self._ready.clear()  # under the lock: a put after this schedules a wake-up that sets it
            await self._ready.wait()

    def qsize(self) -> int:
        return len(self._items)


# -- running blocking code off the event loop ------------------------------------------------------


async def _wait_thread(thread: threading.Thread) -> None:
    """Wait for a thread without blocking the loop (and without borrowing an executor thread)."""
    while thread.is_alive():
        await asyncio.sleep(0.005)


async def _threaded(produce: Callable[[threading.Event], Iterator[T]], maxsize: int, name: str) -> AsyncIterator[T]:
    """The items of a blocking iterator run on its own thread, at most `maxsize` ahead of the consumer.

    `produce(stop)` should check `stop` between items. Closing or cancelling the consumer sets it
    and waits for the thread, so nothing outlives the iteration; exceptions in the thread re-raise here.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    slots = threading.Semaphore(maxsize)
    stop = threading.Event()

    def send(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def run() -> None:
        try:
            with closing(produce(stop)) as items:
                for item in items:
                    while not slots.acquire(timeout=0.05):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    send("item", item)
            send("end", None)
        except BaseException as e:  # handed to the consumer, which re-raises it
            send("error", e)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            slots.release()
            yield value
    finally:
        stop.set()
        await _wait_thread(thread)


# -- files -----------------------------------------------------------------------------------------


def _probe(path: Path) -> tuple[bool, bool]:
    """(has audio, has video) for a media file; UserError if it is missing, not media, or its only track is unusable."""
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        with av.open(str(path)) as container:
            audio = [s for s in container.streams.audio if _decodable(s)]
            if container.streams.audio and not audio and not container.streams.video:
                raise UserError(f"audio in {path} is corrupt, empty or in an unknown codec "
                                f"({_describe(container.streams.audio[0])}; {CONVERT_HINT})")
            return bool(audio), bool(container.streams.video)
    except (av.error.FFmpegError, OSError) as e:
        raise UserError(f"cannot read {path}: {e} (is it an audio or video file?)") from None


def _decodable(stream: av.audio.stream.AudioStream) -> bool:
    """FFmpeg also lists audio it cannot decode: an unknown codec (no codec context), or an empty
    or damaged header (0 Hz, 0 channels, as an empty .flac opens). Such a stream yields no samples."""
    ctx = stream.codec_context
    return ctx is not None and ctx.sample_rate > 0 and ctx.channels > 0


def _describe(stream: av.audio.stream.AudioStream) -> str:
    ctx = stream.codec_context
    return "no decoder for it" if ctx is None else f"{ctx.sample_rate} Hz, {ctx.channels} channels"


def decode_audio_chunks(path: Path, chunk_samples: int, stop: threading.Event | None = None) -> Iterator[AudioChunk]:
    """Stream `path`'s first audio track as 16 kHz mono chunks of `chunk_samples` (the last may be shorter).

    Unlike `fdrl.audio.decode_audio` this never holds the whole file, so an hour-long recording
    starts at once and uses constant memory. It fails the same way: UserError for a file that is
    corrupt, holds no samples, or holds NaN or infinite ones (they would reach every score).
    """
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise UserError(f"cannot read {path}: {e} (is it an audio file?)") from None
    with container:
        # Same conversion as fdrl.audio.decode_audio: resample each channel, then average them
        # (FFmpeg's own downmix weights by 1/sqrt(2) and can exceed 1.0).
        resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
        pending: list[np.ndarray] = []
        buffered = 0
        emitted = 0

        def take(n: int) -> AudioChunk:
            nonlocal pending, buffered, emitted
            buf = np.concatenate(pending)
            chunk = AudioChunk(emitted / SAMPLE_RATE, buf[:n].copy())
            pending, buffered, emitted = [buf[n:]], buffered - n, emitted + n
            return chunk

        def frames() -> Iterator[Any]:
            try:
                for frame in container.decode(container.streams.audio[0]):
                    yield from resampler.resample(frame)
                yield from resampler.resample(None)  # flush the resampler's delay line
            except av.error.FFmpegError as e:
                raise UserError(f"audio in {path} is corrupt or truncated ({e})") from None

        for out in frames():
            if stop is not None and stop.is_set():
                return
            samples = out.to_ndarray().mean(axis=0, dtype=np.float32)
            check_finite(samples, path)
            pending.append(samples)
            buffered += samples.size
            while buffered >= chunk_samples:
                yield take(chunk_samples)
        if buffered:
            yield take(buffered)
        elif not emitted:
            raise no_samples(path)


def _video_frames(path: Path, rate_hz: float) -> Iterator[VideoFrame]:
    """`fdrl.video.read_frames` as VideoFrames (closing this closes the container too)."""
    with closing(read_frames(path, rate_hz)) as frames:
        for t, image in frames:
            yield VideoFrame(t, image)


class FileSource:
    """Audio and/or video from files, interleaved in time order.

    `pace="fast"` yields as fast as the consumer takes (deterministic: tests, batch runs);
    `pace="realtime"` holds each item until `t` seconds after the first, like a live source.
    Audio comes from `audio_path` when it has an audio track, frames from `video_path` when given;
    the two may be the same file. Missing files, or no usable track at all, raise UserError here.
    """

    def __init__(self, audio_path: str | Path | None, video_path: str | Path | None = None,
                 pace: Literal["fast", "realtime"] = "fast", chunk_ms: int = 100,
                 video_fps_limit: float | None = None, queue_size: int = 32) -> None:
        if pace not in ("fast", "realtime"):
            raise UserError(f"pace must be 'fast' or 'realtime', got {pace!r}")
        if chunk_ms <= 0:
            raise UserError(f"chunk_ms must be positive, got {chunk_ms}")
        self.audio_path = Path(audio_path) if audio_path is not None else None
        self.video_path = Path(video_path) if video_path is not None else None
        self.pace = pace
        self.chunk_samples = SAMPLE_RATE * chunk_ms // 1000
        self.video_fps_limit = video_fps_limit
        self.queue_size = queue_size
        self.has_audio = self.audio_path is not None and _probe(self.audio_path)[0]
        self.has_video = self.video_path is not None and _probe(self.video_path)[1]
        if not (self.has_audio or self.has_video):
            named = ", ".join(str(p) for p in (self.audio_path, self.video_path) if p is not None) or "no file"
            raise UserError(f"no audio or video track could be decoded from {named} (pass a media file with sound or pictures)")

    def _items(self, stop: threading.Event) -> Iterator[Item]:
        """Blocking: both tracks decoded lazily and merged by time (runs on the decoder thread)."""
        streams: list[Iterator[Item]] = []
        if self.has_audio:
            assert self.audio_path is not None
            streams.append(decode_audio_chunks(self.audio_path, self.chunk_samples, stop))
        if self.has_video:
            assert self.video_path is not None
            streams.append(_video_frames(self.video_path, self.video_fps_limit or math.inf))
        try:
            yield from heapq.merge(*streams, key=lambda item: item.t)
        finally:
            for s in streams:  # closes the containers now, on this thread
                s.close()  # type: ignore[attr-defined]

    async def _paced(self) -> AsyncIterator[Item]:
        loop = asyncio.get_running_loop()
        items = _threaded(self._items, self.queue_size, name="fdrl-file-decoder")
        start: float | None = None
        try:
            async for item in items:
                if self.pace == "realtime":
                    now = loop.time()
                    start = now if start is None else start  # the wall time of t = 0
                    delay = start + item.t - now
                    if delay > 0:
                        await asyncio.sleep(delay)
                yield item
        finally:
            await items.aclose()

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._paced()


# -- microphone ------------------------------------------------------------------------------------


def import_sounddevice() -> Any:
    """sounddevice, imported only when a device is needed; a missing PortAudio becomes a UserError."""
    try:
        import sounddevice
    except OSError:
        raise UserError(PORTAUDIO_MISSING) from None
    return sounddevice


def _input_device(sd: Any, device: int | str | None) -> dict[str, Any]:
    """The device's info, checked to be an input; UserError naming the device otherwise."""
    try:
        info = sd.query_devices(device, "input")
    except (ValueError, sd.PortAudioError) as e:
        if device is None:
            raise UserError(f"no audio input device found ({e}): connect a microphone, or list inputs with `fdrl devices`") from None
        raise UserError(f"audio input device {device!r} not found ({e}): list inputs with `fdrl devices`") from None
    if info.get("max_input_channels", 0) < 1:
        raise UserError(f"audio device {device!r} has no input channels: pick an input from `fdrl devices`")
    return dict(info)


class MicrophoneSource:
    """Live audio from a sounddevice input stream, as 16 kHz mono chunks timed by sample count.

    The PortAudio callback only converts the block and leaves it in a bounded queue that drops its
    oldest chunk, which protects the callback from a slow consumer or a blocked loop (`dropped_s`), and
    device overruns reported by PortAudio are counted in `overflows`. Times start at 0 when the
    stream starts, or at `started_at - epoch` when an `epoch` (a `time.monotonic()` value shared with
    other live sources) is given. `stream_factory(device=, samplerate=, channels=, blocksize=,
    callback=)` replaces `sounddevice.InputStream` in tests.
    """

    def __init__(self, device: int | str | None = None, sample_rate: int | None = None, channels: int = 1,
                 block_ms: int = 30, queue_size: int = 100, stream_factory: Callable[..., Any] | None = None,
                 epoch: float | None = None) -> None:
        if queue_size < 1 or block_ms <= 0:
            raise UserError(f"microphone queue_size and block_ms must be positive, got {queue_size} and {block_ms}")
        self.device = device
        self.channels = channels
        self.queue_size = queue_size
        self.epoch = epoch
        self.overflows = 0
        self.started_at: float | None = None
        self._queue: DropOldestQueue | None = None
        if stream_factory is None:
            sd = import_sounddevice()
            info = _input_device(sd, device)
            sample_rate = sample_rate or int(info["default_samplerate"])
            try:
                sd.check_input_settings(device=device, channels=channels, samplerate=sample_rate, dtype="float32")
            except (ValueError, sd.PortAudioError) as e:
                raise UserError(f"audio input device {device!r} does not support {channels} channel(s) at {sample_rate} Hz ({e}): "
                                f"see `fdrl devices`") from None
            stream_factory = lambda **kw: sd.InputStream(dtype="float32", **kw)  # noqa: E731
        self.sample_rate = sample_rate or SAMPLE_RATE
        self.block_frames = max(1, self.sample_rate * block_ms // 1000)
        self._stream_factory = stream_factory

    @property
    def dropped_s(self) -> float:
        """Seconds of audio dropped because the consumer fell behind."""
        return self._queue.dropped_s if self._queue is not None else 0.0

    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def _chunks(self) -> AsyncIterator[AudioChunk]:
        queue = self._queue = DropOldestQueue(self.queue_size)
        self.started_at = time.monotonic()
        clock = ChunkClock(self.sample_rate, t0=0.0 if self.epoch is None else self.started_at - self.epoch)

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            # PortAudio's thread: convert now (indata is reused after we return), then hand over.
            self.overflows += bool(status)  # this thread is the only writer
            chunk = clock(indata)
            if chunk is not None:
                queue.put(chunk)

        stream = None
        try:
            stream = self._stream_factory(device=self.device, samplerate=self.sample_rate, channels=self.channels,
                                          blocksize=self.block_frames, callback=callback)
            stream.start()
        except Exception as e:  # PortAudio reports busy or unplugged devices only here
            if stream is not None:
                stream.close()
            raise UserError(f"audio input device {self.device!r} could not be opened ({e}): check it, or list inputs with `fdrl devices`") from None
        try:
            while True:
                yield await queue.get()
        finally:
            stream.stop()
            stream.close()

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._chunks()


# -- camera ----------------------------------------------------------------------------------------


def _open_camera(index: int) -> Any:
    import cv2

    return cv2.VideoCapture(index)


class CameraSource:
    """Live frames from an OpenCV camera, at most `fps` per second, always the latest one.

    A thread reads the camera continuously (so OpenCV's internal buffer never serves stale frames)
    and leaves each kept frame in a one-slot mailbox; a frame the consumer had not taken yet is
    overwritten and counted in `dropped`. After `max_failures` failed reads in a row the camera is
    taken as lost: `lost` is set and iteration ends with a `SourceLost` item, so the pipeline can
    carry on with audio only and say so.
    The camera opens when iteration starts; a camera that cannot open raises UserError there.
    Times are `time.monotonic()` seconds since `epoch` (default: when iteration starts).
    """

    def __init__(self, index: int = 0, fps: float = 10.0, capture_factory: Callable[[int], Any] | None = None,
                 max_failures: int = 10, epoch: float | None = None) -> None:
        if fps <= 0:
            raise UserError(f"camera fps must be positive, got {fps}")
        self.index = index
        self.fps = fps
        self.max_failures = max_failures
        self.epoch = epoch
        self.dropped = 0
        self.lost = False
        self._capture_factory = capture_factory or _open_camera

    async def _frames(self) -> AsyncIterator[VideoFrame]:
        loop = asyncio.get_running_loop()
        epoch = time.monotonic() if self.epoch is None else self.epoch
        self.lost = False
        opened: asyncio.Future[bool] = loop.create_future()
        wake = asyncio.Event()
        stop = threading.Event()
        lock = threading.Lock()
        mailbox: list[VideoFrame] = []  # holds at most one frame
        ended = threading.Event()

        def notify(fn: Callable[..., None], *args: Any) -> None:
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop closed
                stop.set()

        def report_open(ok: bool) -> None:
            if not opened.done():
                opened.set_result(ok)

        def run() -> None:
            capture = None
            try:
                try:
                    capture = self._capture_factory(self.index)
                except Exception:  # OpenCV backends raise for some bad indices instead of failing open
                    capture = None
                if capture is None or not capture.isOpened():
                    notify(report_open, False)
                    return
                notify(report_open, True)
                period, next_t, failures = 1.0 / self.fps, 0.0, 0
                while not stop.is_set():
                    try:
                        ok, image = capture.read()
                    except Exception:  # a backend error mid-stream counts as a failed read
                        ok, image = False, None
                    if not ok or image is None:
                        failures += 1
                        if failures >= self.max_failures:
                            self.lost = True
                            return
                        time.sleep(0.02)
                        continue
                    failures = 0
                    t = time.monotonic() - epoch
                    if t < next_t:
                        continue
                    # Stay on the fps grid, but never try to catch up a burst after a stall.
                    next_t = next_t + period if t < next_t + period else t + period
                    with lock:
                        fresh = not mailbox  # else the wake-up for the frame it replaces is still due
                        if mailbox:
                            self.dropped += 1
                            mailbox.clear()
                        mailbox.append(VideoFrame(t, image))
                    if fresh:
                        notify(wake.set)
            finally:
                if capture is not None:
                    capture.release()
                ended.set()
                notify(report_open, False)
                notify(wake.set)

        thread = threading.Thread(target=run, name="fdrl-camera", daemon=True)
        thread.start()
        try:
            if not await opened:
                raise UserError(f"camera {self.index} could not be opened: check the device or pass --no-video")
            while True:
                # Clear before looking: a frame published after the look sets `wake` again.
                wake.clear()
                with lock:
                    frame = mailbox.pop() if mailbox else None
                if frame is not None:
                    yield frame
                elif ended.is_set():
                    if self.lost:
                        yield SourceLost(time.monotonic() - epoch, "camera",
                                         f"camera {self.index} stopped sending frames: carrying on with audio only")
                    return
                else:
                    await wake.wait()
        finally:
            stop.set()
            await _wait_thread(thread)

    def __aiter__(self) -> AsyncIterator[VideoFrame]:
        return self._frames()


# -- the caller's own chunks -----------------------------------------------------------------------


async def _as_async(items: AsyncIterable[T] | Iterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
            await asyncio.sleep(0)  # let the other pump run


class ChunkSource:
    """Bring your own source: the caller's audio blocks and/or frames in the common shape.

    `audio` yields numpy blocks at `sample_rate`, mono (frames,) or (frames, channels), of any
    length; they become 16 kHz mono `AudioChunk`s timed by sample count. `video` yields
    `VideoFrame`s, `(t, image)` pairs, or bare BGR images (timed on arrival, in monotonic seconds
    since iteration started), and may end with a `SourceLost` to say the camera went away. Either
    iterator may be sync or async; items come out in the order the two produce them.
    """

    def __init__(self, audio: AsyncIterable[np.ndarray] | Iterable[np.ndarray] | None = None,
                 sample_rate: int = SAMPLE_RATE,
                 video: AsyncIterable[Any] | Iterable[Any] | None = None, queue_size: int = 8) -> None:
        if audio is None and video is None:
            raise UserError("ChunkSource needs an audio or a video iterator")
        self.audio, self.video, self.sample_rate, self.queue_size = audio, video, sample_rate, queue_size

    async def _items(self) -> AsyncIterator[Item]:
        queue: asyncio.Queue[Item | None | BaseException] = asyncio.Queue(self.queue_size)
        epoch = time.monotonic()

        async def pump_audio(blocks: AsyncIterable[np.ndarray] | Iterable[np.ndarray]) -> None:
            clock = ChunkClock(self.sample_rate)
            async for block in _as_async(blocks):
                chunk = clock(block)
                if chunk is not None:
                    await queue.put(chunk)
            last = clock.flush()
            if last is not None:
                await queue.put(last)

        async def pump_video(frames: AsyncIterable[Any] | Iterable[Any]) -> None:
            async for frame in _as_async(frames):
                if isinstance(frame, (VideoFrame, SourceLost)):
                    await queue.put(frame)
                elif isinstance(frame, tuple):
                    await queue.put(VideoFrame(float(frame[0]), frame[1]))
                else:
                    await queue.put(VideoFrame(time.monotonic() - epoch, frame))

        async def guarded(pump: Any) -> None:
            try:
                await pump
                await queue.put(None)
            except Exception as e:  # handed to the consumer
                await queue.put(e)

        pumps = [pump_audio(self.audio)] if self.audio is not None else []
        pumps += [pump_video(self.video)] if self.video is not None else []
        tasks = [asyncio.ensure_future(guarded(p)) for p in pumps]
        running = len(tasks)
        try:
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._items()


# -- devices ---------------------------------------------------------------------------------------


def list_devices(sd: Any = None, capture_factory: Callable[[int], Any] | None = None,
                 camera_indices: Iterable[int] = range(4)) -> list[dict[str, Any]]:
    """Input-capable audio devices and the cameras that open, for `fdrl devices`.

    Audio entries: {"kind": "audio", "index", "name", "channels", "sample_rate", "default"};
    camera entries: {"kind": "camera", "index", "name"}. `sd` and `capture_factory` are for tests.
    """
    sd = sd if sd is not None else import_sounddevice()
    try:
        devices = list(sd.query_devices())
        default_in = sd.default.device[0]  # (input, output) pair
    except Exception as e:  # PortAudio itself failed to enumerate
        raise UserError(f"could not list audio devices ({e}): check that PortAudio can see your sound system") from None
    out: list[dict[str, Any]] = []
    for i, dev in enumerate(devices):
        if dev.get("max_input_channels", 0) > 0:
            out.append({"kind": "audio", "index": i, "name": dev["name"], "channels": int(dev["max_input_channels"]),
                        "sample_rate": float(dev["default_samplerate"]), "default": i == default_in})

    factory = capture_factory or _open_camera
    with _quiet_opencv():
        for index in camera_indices:
            capture = factory(index)
            try:
                if capture is not None and capture.isOpened():
                    out.append({"kind": "camera", "index": index, "name": f"camera {index}"})
            finally:
                if capture is not None:
                    capture.release()
    return out


class _quiet_opencv:
    """Silence OpenCV's 'can't open camera by index' warnings while probing, then restore the level."""

    def __enter__(self) -> None:
        import cv2

        self._logging = getattr(getattr(cv2, "utils", None), "logging", None)
        if self._logging is not None:
            self._level = self._logging.getLogLevel()
            self._logging.setLogLevel(self._logging.LOG_LEVEL_SILENT)

    def __exit__(self, *exc: object) -> None:
        if self._logging is not None:
            self._logging.setLogLevel(self._level)
