"""Events: the JSON form is stable, JSON-serialisable, and round-trips to equal events."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from fdrl.errors import UserError
from stream.events import (EVENT_TYPES, Error, FaceUpdate, Fallback, Level, SpeechDiscarded, SpeechStarted, Stats,
                           Utterance, event_from_json)

EXAMPLES = [
    SpeechStarted("mic", 1.25),
    Utterance(stream="mic", index=3, start=1.25, end=2.8, text="I am so happy", label="happiness",
              scores={"happiness": 0.7, "neutral": 0.3}, final=True, modalities=("audio", "text", "face"),
              timings={"asr": 0.21, "model": 0.01, "queue": 0.0, "end_to_label": 0.3}, face_label="happiness"),
    Utterance(stream="mic", index=4, start=3.0, end=3.9, text="", label="neutral", scores={"neutral": 1.0}, final=False,
              modalities=("audio",), timings={"model": 0.01}),
    FaceUpdate("cam", 2.0, "surprise", {"surprise": 0.9, "neutral": 0.1}, (10, 20, 64, 64)),
    FaceUpdate("cam", 2.2, None, None, None),
    Stats(stream="mic", time=10.0, segments_closed=4, utterances=3, errors=0, no_speech=1, audio_dropped_s=0.5,
          frames_dropped=2, queue_depths={"segments": 1, "inference": 0}, compute_ratio=0.12, overflows=1),
    Level("mic", 0.03, -42.5, False),
    Error("mic", 5.0, "whisper failed", "asr", (4.0, 5.0)),
    Error("mic", 6.0, "camera lost", "camera", None),
    SpeechDiscarded("mic", 1.25, 1.6, "too_short"),
    SpeechDiscarded("mic", 3.0, 3.9, "no_speech", 4),
    Stats(stream="mic", time=10.0, segments_closed=4, utterances=3, errors=0, no_speech=1, audio_dropped_s=0.5,
          frames_dropped=2, queue_depths={"segments": 1, "inference": 0}, compute_ratio=0.12, overflows=1, discarded=2),
    Fallback("mic", 0.0, "runtime.device is 'cuda' but CUDA is not available: running on the CPU (slower)", "device"),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip_through_json_text(event):
    d = event.to_json()
    assert d["type"] == type(event).type
    back = event_from_json(json.loads(json.dumps(d)))
    assert back == event and type(back) is type(event)


def test_json_shape_is_plain_and_exact():
    d = EXAMPLES[1].to_json()
    assert d == {
        "type": "utterance", "stream": "mic", "index": 3, "start": 1.25, "end": 2.8, "text": "I am so happy",
        "label": "happiness", "scores": {"happiness": 0.7, "neutral": 0.3}, "final": True,
        "modalities": ["audio", "text", "face"],
        "timings": {"asr": 0.21, "model": 0.01, "queue": 0.0, "end_to_label": 0.3}, "face_label": "happiness",
        "text_dropped": None, "best_guess": None,
    }
    assert EXAMPLES[3].to_json()["box"] == [10, 20, 64, 64]
    assert EXAMPLES[7].to_json()["segment"] == [4.0, 5.0]


def test_type_names():
    assert set(EVENT_TYPES) == {"speech_started", "speech_discarded", "utterance", "face", "stats", "level", "error",
                                "fallback"}


def test_numpy_values_become_python_numbers():
    e = Level("mic", np.float64(0.5), np.float32(-20.0), np.bool_(True))
    text = json.dumps(e.to_json())  # would raise on numpy scalars
    assert json.loads(text) == {"type": "level", "stream": "mic", "time": 0.5, "rms_db": -20.0, "speaking": True}


def test_events_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        EXAMPLES[0].start = 2.0  # type: ignore[misc]


def test_from_json_errors_and_tolerance():
    with pytest.raises(UserError, match="unknown event type 'nope'"):
        event_from_json({"type": "nope"})
    with pytest.raises(UserError, match="missing the field 'start'"):
        event_from_json({"type": "speech_started", "stream": "mic"})
    # Optional fields may be absent; unknown keys (a newer recorder) are ignored.
    d = EXAMPLES[2].to_json()
    del d["face_label"]
    d["extra"] = 1
    assert event_from_json(d) == EXAMPLES[2]
