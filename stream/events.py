"""Everything the streaming pipeline emits, as typed events with a stable JSON form.

The UI, the JSONL recorder and library users all consume the same objects. Each event carries
the `stream` it came from (a session may mix sources) and a time in seconds from the start of that
stream, never a wall-clock time, so a recording replays identically. `to_json()` gives a plain dict
of JSON types with a `"type"` field; `event_from_json()` turns it back into the event.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from fdrl.errors import UserError


class _JsonEvent:
    """Shared JSON round trip: dataclass fields plus `type`; tuples become lists and back."""

    type: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _plain(getattr(self, f.name))
        return out


def _plain(value: Any) -> Any:
    """A JSON-ready copy: tuples to lists, dicts copied, numpy scalars to Python numbers."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


@dataclass(frozen=True)
class SpeechStarted(_JsonEvent):
    """The VAD opened a segment: someone started talking at `start` (pre-roll included)."""

    type: ClassVar[str] = "speech_started"
    stream: str
    start: float


@dataclass(frozen=True)
class SpeechDiscarded(_JsonEvent):
    """A segment closed without becoming an utterance, so the speech a `SpeechStarted` opened ends here.

    `reason` is "too_short" (the VAD heard less than `vad.min_utterance_ms` of voice: a click, a
    cough; `index` is None) or "no_speech" (Whisper heard no words and the segment holds less than
    `asr.gate_min_voiced_s` of voice: noise, not a laugh; `index` names the segment whose
    provisional `Utterance` is thereby withdrawn). Every `SpeechStarted` is closed by exactly one
    final `Utterance`, `Error` or `SpeechDiscarded`.
    """

    type: ClassVar[str] = "speech_discarded"
    stream: str
    start: float
    end: float
    reason: str
    index: int | None = None


@dataclass(frozen=True, kw_only=True)
class Utterance(_JsonEvent):
    """A labelled speech segment.

    Emitted twice per segment: first with `final=False` from audio alone as soon as the segment
    closes (so the UI reacts within the hangover), then with `final=True` once the transcript is in.
    `timings` holds seconds per stage, e.g. {"asr", "model", "queue", "end_to_label"}.
    `modalities` names the inputs the label used; `text_dropped` says why the words did not count
    when there were some to hear ("low_asr_confidence": the ASR was unsure of them, e.g. another
    language; "no_words": a laugh or a sob, labelled from the voice), None when they did.
    `label` is "uncertain" when the calibrated score of the best label is below
    `labels.uncertain_below`; `best_guess` is always the best label, and `scores` are unchanged.
    Built by keyword only: eleven fields in a row are too easy to shift by one.
    """

    type: ClassVar[str] = "utterance"
    stream: str
    index: int
    start: float
    end: float
    text: str
    label: str
    scores: dict[str, float]
    final: bool
    modalities: tuple[str, ...]
    timings: dict[str, float]
    face_label: str | None = None
    text_dropped: str | None = None
    best_guess: str | None = None


@dataclass(frozen=True)
class FaceUpdate(_JsonEvent):
    """The latest face expression; `label`, `scores` and `box` are None when no face is seen."""

    type: ClassVar[str] = "face"
    stream: str
    time: float
    label: str | None
    scores: dict[str, float] | None
    box: tuple[int, int, int, int] | None  # x, y, width, height in pixels


@dataclass(frozen=True, kw_only=True)
class Stats(_JsonEvent):
    """Periodic health figures; `compute_ratio` is processing time over audio time (< 1 keeps up).

    Built by keyword only, like `Utterance`: most fields are counts that would swap silently.
    """

    type: ClassVar[str] = "stats"
    stream: str
    time: float
    segments_closed: int                  # = utterances + errors + no_speech once the stream ends
    utterances: int
    errors: int
    no_speech: int                        # segments withdrawn as noise: no words and too little voice
    audio_dropped_s: float                # audio lost before the pipeline (a live source outrun), seconds
    frames_dropped: int
    queue_depths: dict[str, int]
    compute_ratio: float
    overflows: int
    discarded: int = 0                    # segments the VAD opened but found too short (SpeechStarted count
                                          # = segments_closed + discarded)


@dataclass(frozen=True)
class Level(_JsonEvent):
    """Input meter for the UI only; recorders may leave it out of JSONL."""

    type: ClassVar[str] = "level"
    stream: str
    time: float
    rms_db: float
    speaking: bool


@dataclass(frozen=True)
class Error(_JsonEvent):
    """A stage failed on one item and the pipeline carried on; `segment` is (start, end) if known."""

    type: ClassVar[str] = "error"
    stream: str
    time: float
    message: str
    stage: str
    segment: tuple[float, float] | None = None


@dataclass(frozen=True)
class Fallback(_JsonEvent):
    """The pipeline lost a resource and carried on without it, e.g. stage "device" (CUDA missing or
    out of memory: now on the CPU) or "camera" (the camera stopped: now audio only). Sent once per
    stream and fallback; nothing was lost with it."""

    type: ClassVar[str] = "fallback"
    stream: str
    time: float
    message: str
    stage: str


Event = Union[SpeechStarted, SpeechDiscarded, Utterance, FaceUpdate, Stats, Level, Error, Fallback]

EVENT_TYPES: dict[str, type] = {cls.type: cls for cls in (SpeechStarted, SpeechDiscarded, Utterance, FaceUpdate, Stats,
                                                           Level, Error, Fallback)}

# Fields stored as tuples in the event but as lists in JSON.
_TUPLE_FIELDS = {"modalities", "box", "segment"}


def json_line(event: Event) -> str:
    """The event as one line of JSON Lines (`--jsonl`, recordings, `fdrl predict --out x.jsonl`)."""
    return json.dumps(event.to_json(), ensure_ascii=False) + "\n"


def event_from_json(d: dict[str, Any]) -> Event:
    """The event `d` describes (the output of `to_json`, e.g. one line of a recorded session).

    Keys the event does not know are ignored, so newer recordings still replay; a missing key or
    an unknown `type` is a UserError.
    """
    kind = d.get("type")
    cls = EVENT_TYPES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise UserError(f"unknown event type {kind!r} (expected one of: {', '.join(EVENT_TYPES)})")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            if f.default is dataclasses.MISSING:
                raise UserError(f"event of type {kind!r} is missing the field {f.name!r}")
            continue
        value = d[f.name]
        if f.name in _TUPLE_FIELDS and value is not None:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)
