"""Where audio and video come from: files, the microphone, the camera, or the caller's own chunks.

Every source is an async iterator of `AudioChunk` (float32 mono 16 kHz) and `VideoFrame` (BGR uint8)
items, each stamped `t` = seconds since the start of the stream. Audio times come from sample
counts and file video times from container timestamps, never from the wall clock, so a file gives
the same items on every run. Blocking work (decoding, PortAudio callbacks, `VideoCapture.read`)
lives on its own thread and reaches the event loop through a bounded `Bridge`; closing or
cancelling the consumer stops that thread and releases the file or device. A live device that
stops mid-stream ends its iteration with a `SourceLost` item, so whoever merges it with others
can carry on.

One concept per module: `items` (what sources yield, `ChunkClock`), `bridge` (thread → loop),
`file`, `microphone`, `camera`, `chunks` (the caller's own), `merge` (several sources as one),
`devices` (what `fdrl devices` lists).
"""
from stream.sources.bridge import Bridge, on_thread
from stream.sources.camera import CameraSource
from stream.sources.chunks import ChunkSource
from stream.sources.devices import list_devices
from stream.sources.file import FileSource, decode_audio_chunks
from stream.sources.items import AudioChunk, ChunkClock, SourceItem, SourceLost, VideoFrame
from stream.sources.merge import Merged, aclose, merge
from stream.sources.microphone import MicrophoneSource, import_sounddevice

__all__ = ["AudioChunk", "Bridge", "CameraSource", "ChunkClock", "ChunkSource", "FileSource", "Merged",
           "MicrophoneSource", "SourceItem", "SourceLost", "VideoFrame", "aclose", "decode_audio_chunks",
           "import_sounddevice", "list_devices", "merge", "on_thread"]
