"""Session recording: the raw inputs and the emitted events, in files any tool can open.

A session folder holds `audio.wav` (16-bit PCM mono), `video.mp4` (only if a camera was on),
`events.jsonl` (one event per line) and `session.json` (metadata). Times in the events are
stream seconds, and sample i of the wav is stream time i / sample_rate, so `fdrl replay` and
any external tool can line the three up without a clock.

A recording must survive the session ending badly, so every file is kept valid while it grows:
- `events.jsonl` is flushed per line: a crash loses at most the line being written.
- `audio.wav`: the stdlib `wave` writer rewrites the RIFF and data sizes after every chunk, and
  we flush after each chunk, so the file on disk is a complete WAV after every `write_audio`
  (a few extra bytes per 30 ms chunk; cheaper and safer than patching every N seconds).
- `video.mp4` is fragmented MP4 (a fragment per keyframe, written through at once), so after a
  crash everything up to the last keyframe (at most `GOP_SECONDS`) still plays.
- `session.json` is written at the start (`"complete": false`) and rewritten atomically at close
  (fdrl.outputs.atomic_write: a failed rewrite leaves the old file and no temporary).
A write error (disk full, read-only target) raises `RecordingError`; the files are then closed
with their content up to the last complete chunk / line still valid. A session goes on without its
recording after that (stream/session.py). The folder must be new or empty: a recording never
overwrites or mixes with files that are not its own.
"""
from __future__ import annotations

import datetime as _dt
import json
import threading
import wave
from dataclasses import dataclass
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Mapping

import numpy as np

from fdrl.errors import UserError
from fdrl.outputs import OutputError, os_reason, require_empty_folder, write_atomic, write_error
from stream.events import Event, Level, event_from_json, json_line

AUDIO_FILE, VIDEO_FILE, EVENTS_FILE, META_FILE = "audio.wav", "video.mp4", "events.jsonl", "session.json"
SESSION_FILES = (AUDIO_FILE, VIDEO_FILE, EVENTS_FILE, META_FILE)
SESSION_FORMAT = "fdrl-session/1"
VIDEO_CODECS = ("libx264", "h264", "mpeg4")  # first one PyAV's FFmpeg can encode wins
VIDEO_TIME_BASE = Fraction(1, 1000)          # pts in milliseconds of stream time: variable frame rate
GOP_SECONDS = 2.0                             # keyframe (and MP4 fragment) interval: the most a crash loses
GAP_TOLERANCE_S = 0.010                       # audio gaps shorter than this are clock jitter, not drops


class RecordingError(OutputError):
    """Writing the recording failed (disk full, folder gone, read-only target).

    What was written before the failure stays valid; the recorder is closed.
    """


def _version() -> str:
    try:
        return metadata.version("fdrl-stream")
    except metadata.PackageNotFoundError:
        return "unknown"


def _now() -> str:
    """Local wall-clock time with its UTC offset, for the metadata only (events use stream time)."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_error(path: Path, e: OSError) -> RecordingError:
    """`e` as a RecordingError naming `path` (an OutputError already names its file)."""
    return RecordingError(str(e if isinstance(e, OutputError) else write_error(path, e)))


def _truncate(path: Path, size: int) -> None:
    """Cut `path` back to `size` bytes, dropping a partly written chunk or line.

    Truncating frees space, so this works on a full disk. Best effort: we are already failing.
    """
    try:
        with open(path, "r+b") as f:
            f.truncate(size)
    except OSError:
        pass


class JsonlWriter:
    """Events as JSON Lines, one `event.to_json()` per line, flushed per line.

    `Level` events (the input meter, tens per second) are left out unless `levels=True`.
    """

    def __init__(self, path: str | Path, levels: bool = False) -> None:
        self.path = Path(path)
        self.levels = levels
        self._good = 0  # bytes known to be on disk as complete lines
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: BinaryIO | None = open(self.path, "wb")
        except OSError as e:
            raise _write_error(self.path, e) from e

    def write(self, event: Event) -> None:
        if isinstance(event, Level) and not self.levels:
            return
        if self._file is None:
            raise RecordingError(f"cannot write {self.path}: the writer is closed")
        line = json_line(event).encode("utf-8")
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as e:
            self._abort()
            raise _write_error(self.path, e) from e
        self._good += len(line)

    def _abort(self) -> None:
        """Close after a failed write, keeping only complete lines."""
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()  # may try to write the failed line again; the truncate below undoes it
            except OSError:
                pass
        _truncate(self.path, self._good)

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as e:
                _truncate(self.path, self._good)
                raise _write_error(self.path, e) from e

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | Path) -> list[Event]:
    """The events of a JSONL file. A truncated last line (the session crashed mid-write) is skipped;
    a bad line anywhere else is a UserError naming it."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    events = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(event_from_json(json.loads(line)))
        except json.JSONDecodeError:
            if n == len(lines):  # no newline after it: the line being written when it stopped
                break
            raise UserError(f"{path}:{n} is not valid JSON (the recording is damaged; delete that line)") from None
    return events


def _to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] (clipped) or int16 as-is -> little-endian 16-bit PCM bytes."""
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"write_audio expects mono samples of shape (n,), got {samples.shape}")
    if samples.dtype == np.int16:
        return samples.astype("<i2").tobytes()
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


class _WavTrack:
    """`audio.wav` on the stream timeline: gaps (dropped audio) are filled with silence."""

    def __init__(self, path: Path, sample_rate: int) -> None:
        self.path, self.sample_rate = path, sample_rate
        self.frames = 0
        self._file = open(path, "wb")
        self._wav = wave.open(self._file, "wb")  # we own the file: wave will not close it
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)
        self._wav.writeframes(b"")  # header now, so even an empty session leaves a valid file
        self._file.flush()
        self._header = self._file.tell()

    def write(self, chunk_t: float, samples: np.ndarray) -> None:
        data = _to_pcm16(samples)
        gap = round(chunk_t * self.sample_rate) - self.frames
        if gap > GAP_TOLERANCE_S * self.sample_rate:
            data = bytes(2 * gap) + data
        self._wav.writeframes(data)  # writes, then rewrites the header sizes
        self._file.flush()
        self.frames += len(data) // 2

    def close(self) -> None:
        self._wav.close()
        self._file.close()

    def abort(self) -> None:
        """After a failed write: drop the partial chunk and make the header match what is left."""
        for close in (self._wav.close, self._file.close):
            try:
                close()
            except (OSError, wave.Error):
                pass
        size = self._header + 2 * self.frames
        _truncate(self.path, size)
        try:
            with open(self.path, "r+b") as f:
                f.seek(4)
                f.write((size - 8).to_bytes(4, "little"))
                f.seek(self._header - 4)
                f.write((2 * self.frames).to_bytes(4, "little"))
        except OSError:
            pass


class _VideoTrack:
    """`video.mp4`: fragmented MP4, variable frame rate (pts = stream time in ms)."""

    def __init__(self, path: Path, fps: float, width: int, height: int) -> None:
        import av  # only sessions with a camera pay for the import

        self.path, self.frames, self._last_pts = path, 0, -1
        self._av = av
        self._container = av.open(
            str(path), "w", format="mp4",
            container_options={"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"})
        codec = next(c for c in VIDEO_CODECS if c in av.codecs_available)
        options = {"preset": "ultrafast", "tune": "zerolatency"} if codec in ("libx264", "h264") else {}
        self._stream = self._container.add_stream(codec, rate=max(1, round(fps)), options=options)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.time_base = VIDEO_TIME_BASE
        self._stream.codec_context.time_base = VIDEO_TIME_BASE
        self._stream.codec_context.gop_size = max(1, round(GOP_SECONDS * fps))

    def write(self, t: float, image_bgr: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image_bgr), format="bgr24")
        # pts must increase strictly; a repeated or backwards timestamp moves 1 ms past the last.
        pts = max(round(t * 1000), self._last_pts + 1)
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        for packet in self._stream.encode(frame):  # frames of another size are scaled by PyAV
            self._container.mux(packet)
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        try:
            for packet in self._stream.encode():  # flush the encoder
                self._container.mux(packet)
        finally:
            self._container.close()

    def abort(self) -> None:
        try:
            self._container.close()
        except (OSError, self._av.error.FFmpegError):
            pass


class SessionRecorder:
    """Record one session into `directory`: audio.wav, video.mp4 (lazily), events.jsonl, session.json.

    Methods are thread-safe (a lock), so the pipeline may write from worker threads and close from
    the event loop. `close()` is idempotent and never awaits, so it is safe in a `finally` of a
    cancelled task. After a `RecordingError` the recorder is closed and further writes raise again.
    The first video frame fixes the video size (rounded down to even, as yuv420p needs).
    """

    def __init__(self, directory: str | Path, sample_rate: int = 16000, video_fps: float = 10,
                 config: Mapping[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        if (self.directory / META_FILE).exists():
            raise UserError(f"{self.directory} already holds a recorded session (record to a new folder)")
        require_empty_folder("the recording folder", self.directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the recording folder {self.directory}: {os_reason(e)}") from None
        self.sample_rate, self.video_fps = sample_rate, video_fps
        self._lock = threading.Lock()
        self._closed = False
        self._error: str | None = None
        self._video: _VideoTrack | None = None
        self._meta: dict[str, Any] = {
            "format": SESSION_FORMAT,
            "version": _version(),
            "started": _now(),
            "sample_rate": sample_rate,
            "video_fps": video_fps,
            "config": dict(config or {}),
            "complete": False,
        }
        try:
            self._write_meta()
            self._audio = _WavTrack(self.directory / AUDIO_FILE, sample_rate)
            self._events = JsonlWriter(self.directory / EVENTS_FILE)
        except OSError as e:
            raise _write_error(self.directory, e) from e

    @property
    def closed(self) -> bool:
        return self._closed

    def write_audio(self, chunk_t: float, samples: np.ndarray) -> None:
        """Append mono samples that start at stream time `chunk_t` (float in [-1, 1] or int16)."""
        with self._lock:
            self._check_open()
            try:
                self._audio.write(chunk_t, samples)
            except OSError as e:
                self._fail(self._audio.path, e)

    def write_frame(self, t: float, image_bgr: np.ndarray) -> None:
        """Append a BGR uint8 frame (H, W, 3) seen at stream time `t`; the first one creates video.mp4."""
        with self._lock:
            self._check_open()
            path = self.directory / VIDEO_FILE
            try:
                if self._video is None:
                    h, w = image_bgr.shape[:2]
                    self._video = _VideoTrack(path, self.video_fps, w - w % 2, h - h % 2)
                self._video.write(t, image_bgr)
            except OSError as e:  # PyAV's errno errors are OSErrors too
                self._fail(path, e)

    def write_event(self, event: Event) -> None:
        with self._lock:
            self._check_open()
            try:
                self._events.write(event)
            except RecordingError as e:
                self._fail_closed(str(e))

    def close(self) -> None:
        """Finish every file (each one even if another fails); then mark the session complete."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            errors: list[str] = []
            for name, close in (("audio", self._audio.close), ("video", self._video and self._video.close),
                                ("events", self._events.close)):
                if close is None:
                    continue
                try:
                    close()
                except (OSError, RecordingError) as e:
                    errors.append(f"{name}: {e}")
            self._finish_meta(errors[0] if errors else None)
            if errors:
                raise RecordingError(f"closing the recording in {self.directory} failed: {'; '.join(errors)}")

    def __enter__(self) -> SessionRecorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            reason = f" after an error: {self._error}" if self._error else ""
            raise RecordingError(f"the recording in {self.directory} is closed{reason}")

    def _fail(self, path: Path, e: OSError) -> None:
        self._fail_closed(str(_write_error(path, e)))

    def _fail_closed(self, message: str) -> None:
        """A write failed: salvage every file up to its last complete chunk, then raise."""
        self._closed, self._error = True, message
        self._audio.abort()
        if self._video is not None:
            self._video.abort()
        self._events._abort()
        self._finish_meta(message)
        raise RecordingError(message)

    def _finish_meta(self, error: str | None) -> None:
        self._meta.update(
            ended=_now(),
            audio_s=round(self._audio.frames / self.sample_rate, 3),
            video_frames=self._video.frames if self._video else 0,
            complete=error is None,
        )
        if error:
            self._meta["error"] = error
        try:
            self._write_meta()
        except OSError:
            pass  # the old session.json (complete: false) stays, which is the truth

    def _write_meta(self) -> None:
        """Write session.json atomically: a reader sees the old or the new file, never half of one."""
        write_atomic(self.directory / META_FILE, json.dumps(self._meta, indent=2) + "\n")


@dataclass(frozen=True)
class Session:
    """A recorded session folder, as `fdrl replay DIR` needs it."""

    audio: Path
    video: Path | None
    events: Path
    meta: dict[str, Any]


def load_session(directory: str | Path) -> Session:
    """The files of a recorded session; UserError naming what is missing if it is not one."""
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"no such session folder: {d} (pass a folder written by a recorded session)")
    missing = [name for name in (META_FILE, AUDIO_FILE, EVENTS_FILE) if not (d / name).is_file()]
    if missing:
        raise UserError(f"{d} is not a recorded session: missing {', '.join(missing)} "
                        "(pass a folder written by a recorded session)")
    try:
        meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{d / META_FILE} is not valid JSON ({e}); the recording is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != SESSION_FORMAT:
        raise UserError(f"{d / META_FILE} is not an fdrl session file (expected format {SESSION_FORMAT!r})")
    video = d / VIDEO_FILE
    return Session(audio=d / AUDIO_FILE, video=video if video.is_file() else None, events=d / EVENTS_FILE, meta=meta)
