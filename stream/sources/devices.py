"""What `fdrl devices` lists: the audio inputs PortAudio sees and the cameras that open."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fdrl.errors import UserError
from stream.sources.camera import open_camera
from stream.sources.microphone import import_sounddevice


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

    factory = capture_factory or open_camera
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
