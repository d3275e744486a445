"""Live audio from a microphone (sounddevice/PortAudio), as 16 kHz mono chunks timed by sample count."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from fdrl.audio import SAMPLE_RATE
from fdrl.errors import UserError
from stream.sources.bridge import Bridge
from stream.sources.items import AudioChunk, ChunkClock

PORTAUDIO_MISSING = "PortAudio library not found: install it (Debian/Ubuntu: sudo apt-get install libportaudio2)"


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

    The PortAudio callback only converts the block and hands it to a `Bridge` that drops its oldest
    chunk when full: a live device cannot wait, so this protects the callback from a slow consumer
    or a blocked loop, and the audio lost is counted in `dropped_s`. Device overruns reported by
    PortAudio are counted in `overflows`. Times start at 0 when the stream starts, or at
    `started_at - epoch` when an `epoch` (a `time.monotonic()` value shared with other live sources)
    is given. `stream_factory(device=, samplerate=, channels=, blocksize=, callback=)` replaces
    `sounddevice.InputStream` in tests.
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
        self._bridge: Bridge[AudioChunk] | None = None  # the latest iteration's
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
        return self._bridge.dropped_weight if self._bridge is not None else 0.0

    def queue_depth(self) -> int:
        return self._bridge.qsize() if self._bridge is not None else 0

    async def _chunks(self) -> AsyncIterator[AudioChunk]:
        bridge = self._bridge = Bridge(self.queue_size, when_full="drop_oldest", weight=lambda chunk: chunk.duration)
        self.started_at = time.monotonic()
        clock = ChunkClock(self.sample_rate, t0=0.0 if self.epoch is None else self.started_at - self.epoch)

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            # PortAudio's thread: convert now (indata is reused after we return), then hand over.
            self.overflows += bool(status)  # this thread is the only writer
            chunk = clock(indata)
            if chunk is not None:
                bridge.put(chunk)

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
            async for chunk in bridge:
                yield chunk
        finally:
            bridge.close()
            stream.stop()
            stream.close()

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._chunks()
