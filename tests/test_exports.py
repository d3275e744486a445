"""`fdrl predict`'s formats (stream/exports.py), each written and parsed back with its own reader."""
from __future__ import annotations

import csv
import io
import json
import re

import pytest

from fdrl.errors import UserError
from stream.events import Utterance, event_from_json
from stream.exports import exporter, to_csv, to_jsonl, to_srt, to_vtt

LABELS = ["neutral", "happiness", "sadness", "anger"]


def utterance(stream: str, index: int, start: float, end: float, text: str, label: str, best: float) -> Utterance:
    rest = (1 - best) / (len(LABELS) - 1)
    scores = {name: round(best if name == label else rest, 4) for name in LABELS}
    return Utterance(stream=stream, index=index, start=start, end=end, text=text, label=label, scores=scores,
                     final=True, modalities=("audio", "text"), timings={"asr": 0.1}, best_guess=label)


UTTERANCES = [
    utterance("calls/a.wav", 0, 0.9, 4.35, " You lied to me again ", "anger", 0.82),
    utterance("calls/a.wav", 1, 5.55, 9.6, 'She said "fine", then <left> & cried,\nloudly', "sadness", 0.61),
    utterance("calls/a.wav", 2, 3601.25, 3604.0, "", "neutral", 0.5),  # a laugh: no words
]


def test_csv_reads_back_with_the_csv_module():
    rows = list(csv.DictReader(io.StringIO(to_csv(UTTERANCES, LABELS))))
    assert list(rows[0]) == ["file", "start", "end", "label", "confidence", *LABELS, "text"]
    assert [r["file"] for r in rows] == ["calls/a.wav"] * 3
    assert [(float(r["start"]), float(r["end"])) for r in rows] == [(u.start, u.end) for u in UTTERANCES]
    assert [r["label"] for r in rows] == ["anger", "sadness", "neutral"]
    assert float(rows[0]["confidence"]) == 0.82 and float(rows[0]["anger"]) == 0.82 and float(rows[0]["neutral"]) == 0.06
    assert rows[1]["text"] == 'She said "fine", then <left> & cried,\nloudly'  # quoting keeps commas and newlines
    assert rows[0]["text"] == "You lied to me again"


def test_csv_adds_the_classes_of_a_custom_checkpoint():
    odd = utterance("b.wav", 0, 0.0, 1.0, "hi", "neutral", 0.5)
    odd = Utterance(**{**odd.__dict__, "scores": {**odd.scores, "mood7": 0.0}})
    header = next(csv.reader(io.StringIO(to_csv([odd], LABELS))))
    assert header[5:-1] == [*LABELS, "mood7"]


def test_jsonl_is_the_event_schema():
    lines = to_jsonl(UTTERANCES).splitlines()
    assert [event_from_json(json.loads(line)) for line in lines] == UTTERANCES


def cues(text: str, separator: str) -> list[tuple[float, float, str]]:
    """(start, end, text) of each cue of an SRT or VTT file."""
    stamp = rf"(\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d)"
    out = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        timing = next(i for i, line in enumerate(lines) if "-->" in line)
        parts = re.fullmatch(rf"{stamp} --> {stamp}", lines[timing]).groups()
        seconds = [int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000 for h, m, s, ms in (parts[:4], parts[4:])]
        out.append((seconds[0], seconds[1], "\n".join(lines[timing + 1:])))
    return out


@pytest.mark.parametrize("write, separator", [(to_srt, ","), (to_vtt, ".")])
def test_subtitles_are_timed_in_order_without_overlap(write, separator):
    text = write(UTTERANCES)
    if write is to_vtt:
        assert text.startswith("WEBVTT\n\n")
        text = text[len("WEBVTT\n\n"):]
    else:
        assert [block.splitlines()[0] for block in text.strip().split("\n\n")] == ["1", "2", "3"]
    parsed = cues(text, separator)
    assert [(s, e) for s, e, _ in parsed] == [(u.start, u.end) for u in UTTERANCES]
    assert all(s < e for s, e, _ in parsed)
    assert all(e <= s2 for (_, e, _), (s2, _, _) in zip(parsed, parsed[1:]))
    assert parsed[0][2] == "[anger 0.82] You lied to me again"
    assert parsed[2][2] == "[neutral 0.50]"
    assert "\n" not in parsed[1][2]  # one line per cue


def test_vtt_escapes_markup_characters():
    second = cues(to_vtt(UTTERANCES)[len("WEBVTT\n\n"):], ".")[1][2]
    assert second == '[sadness 0.61] She said "fine", then &lt;left&gt; &amp; cried, loudly'


@pytest.mark.parametrize("name, files, needle", [
    ("out.txt", 1, "unknown format '.txt'"),
    ("out", 1, "unknown format '(no extension)'"),
    ("out.srt", 2, "subtitles are timed against one recording, and 2 files were given"),
])
def test_bad_out_names(name, files, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        exporter(name, files)


def test_the_extension_picks_the_format():
    assert exporter("x.CSV", 3) is to_csv and exporter("x.jsonl", 3) is to_jsonl and exporter("x.vtt", 1) is to_vtt
