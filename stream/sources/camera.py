"""Live frames from a camera (OpenCV), at most `fps` a second, always the latest one."""
from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import aclosing
from typing import Any

from fdrl.errors import UserError
from stream.sources.bridge import Bridge, on_thread
from stream.sources.items import SourceLost, VideoFrame


def open_camera(index: int) -> Any:
    """`cv2.VideoCapture(index)`; OpenCV is imported only when a camera is wanted."""
    import cv2

    return cv2.VideoCapture(index)


class CameraSource:
    """Live frames from an OpenCV camera, at most `fps` per second, always the latest one.

    A thread reads the camera continuously (so OpenCV's internal buffer never serves stale frames)
    and hands each kept frame to a one-item `Bridge` that drops the oldest: a frame the consumer had
    not taken yet is replaced and counted in `dropped`. After `max_failures` failed reads in a row
    the camera is taken as lost: `lost` is set and iteration ends with a `SourceLost` item, so the
    pipeline can carry on with audio only and say so.
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
        self.lost = False
        self._capture_factory = capture_factory or open_camera
        self._bridge: Bridge[VideoFrame] | None = None  # the latest iteration's

    @property
    def dropped(self) -> int:
        """Frames replaced by a newer one before the consumer took them."""
        return self._bridge.dropped if self._bridge is not None else 0

    def _capture(self, epoch: float, stop: threading.Event) -> Generator[VideoFrame, None, None]:
        """Blocking (the camera thread): open the camera, then yield frames on the fps grid until stopped or lost."""
        try:
            capture = self._capture_factory(self.index)
        except Exception:  # OpenCV backends raise for some bad indices instead of failing open
            capture = None
        try:
            if capture is None or not capture.isOpened():
                raise UserError(f"camera {self.index} could not be opened: check the device or pass --no-video")
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
                    stop.wait(0.02)
                    continue
                failures = 0
                t = time.monotonic() - epoch
                if t < next_t:
                    continue
                # Stay on the fps grid, but never try to catch up a burst after a stall.
                next_t = next_t + period if t < next_t + period else t + period
                yield VideoFrame(t, image)
        finally:
            if capture is not None:
                capture.release()

    async def _frames(self) -> AsyncIterator[VideoFrame | SourceLost]:
        epoch = time.monotonic() if self.epoch is None else self.epoch
        self.lost = False
        bridge = self._bridge = Bridge(1, when_full="drop_oldest")
        async with aclosing(on_thread(lambda stop: self._capture(epoch, stop), bridge, name="fdrl-camera")) as frames:
            async for frame in frames:
                yield frame
        if self.lost:  # set by the camera thread before it ended
            yield SourceLost(time.monotonic() - epoch, "camera",
                             f"camera {self.index} stopped sending frames: carrying on with audio only")

    def __aiter__(self) -> AsyncIterator[VideoFrame | SourceLost]:
        return self._frames()
