"""The `/ws` protocol's client side, checked: what each message a client sends means, or why it is refused.

A client sends an optional `{"type": "start", "sample_rate": R, "format": "pcm16"|"f32"}` first,
then binary audio messages (mono, little-endian), then `{"type": "end"}`. Anything else is a
`ProtocolError`, which the connection answers with one `error` event and a policy close; nothing
here touches the socket, so every rule is testable without one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from fdrl.audio import SAMPLE_RATE

FORMATS = {"pcm16": np.dtype("<i2"), "f32": np.dtype("<f4")}
MIN_RATE, MAX_RATE = 1000, 384_000  # what a sound card or a browser's AudioContext can deliver


class ProtocolError(Exception):
    """A message the protocol does not allow; the text says what was wrong and what to send instead."""


@dataclass(frozen=True)
class Start:
    """How the client's audio is encoded. Without a start message: 16 kHz pcm16, no level events."""

    sample_rate: int = SAMPLE_RATE
    format: str = "pcm16"
    levels: bool = False                  # also send `level` events (the input meter, ten a second)


@dataclass(frozen=True)
class End:
    """The client has no more audio: the server labels what it holds, sends the final stats and closes."""


def parse_text(text: str) -> Start | End:
    """A text message as a `Start` or an `End`."""
    try:
        message = json.loads(text)
    except ValueError:
        raise ProtocolError("a text message must be JSON, e.g. {\"type\": \"end\"}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a text message must be a JSON object, got {type(message).__name__}")
    kind = message.get("type")
    if kind == "end":
        return End()
    if kind != "start":
        raise ProtocolError(f"unknown message type {kind!r} (expected \"start\" or \"end\")")
    return _start(message)


def _start(message: dict) -> Start:
    unknown = sorted(set(message) - {"type", "sample_rate", "format", "levels"})
    if unknown:
        raise ProtocolError(f"unknown start field {unknown[0]!r} (known: sample_rate, format, levels)")
    rate = message.get("sample_rate", SAMPLE_RATE)
    # bool is an int in Python, and JSON's 16000.0 or NaN are not sample rates.
    if type(rate) is not int or not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(f"sample_rate must be a whole number of Hz from {MIN_RATE} to {MAX_RATE}, got {rate!r}")
    fmt = message.get("format", "pcm16")
    if fmt not in FORMATS:
        raise ProtocolError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    levels = message.get("levels", False)
    if type(levels) is not bool:
        raise ProtocolError(f"levels must be true or false, got {levels!r}")
    return Start(rate, fmt, levels)


def decode_audio(data: bytes, start: Start) -> np.ndarray:
    """A binary message as float32 samples in [-1, 1]-ish (f32 is taken as sent, pcm16 scaled)."""
    dtype = FORMATS[start.format]
    if len(data) % dtype.itemsize:
        raise ProtocolError(f"a {start.format} audio message must hold whole samples ({dtype.itemsize} bytes each), "
                            f"got {len(data)} bytes")
    samples = np.frombuffer(data, dtype)
    if start.format == "pcm16":
        return samples.astype(np.float32) / 32768.0
    if not np.isfinite(samples).all():
        bad = samples[~np.isfinite(samples)][0]
        raise ProtocolError(f"f32 audio must be finite numbers, got {bad} (send silence as 0.0)")
    return samples.astype(np.float32)

