"""Video frames from files, sampled at a fixed rate, with times from the stream's own timestamps."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import av
import numpy as np

from fdrl.errors import UserError


def read_frames(path: Path, rate_hz: float, start: float | None = None, end: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (seconds, BGR uint8 frame) at most `rate_hz` times per second within [start, end)."""
    if not path.is_file():
        raise UserError(f"video file not found: {path} (check the path)")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise UserError(f"cannot read video {path}: {e} (is it a video file?)") from None
    with container:
        if not container.streams.video:
            raise UserError(f"{path} has no video track (pass a file with pictures, or leave the video out)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_t = start or 0.0
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                if end is not None and t >= end:
                    break
                if t + 1e-6 < next_t:
                    continue
                next_t = t + 1.0 / rate_hz
                yield t, frame.to_ndarray(format="bgr24")
        except av.error.FFmpegError as e:
            raise UserError(f"video {path} is corrupt or truncated ({e})") from None
