"""`fdrl predict`'s output files: final utterances as CSV, JSON Lines, SRT or WebVTT, chosen by extension.

Pure functions from utterances to text, so each format is tested on its own and the command writes
the result in one atomic step (fdrl.outputs). Every format holds one entry per final utterance, in
the order given (the files in input order, each in time order); the utterance's `stream` is the
file it came from.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from fdrl.errors import UserError
from stream.events import Utterance, json_line

SUBTITLES = (".srt", ".vtt")  # timed against one recording: one input file per export


def confidence(u: Utterance) -> float:
    """The score of the best label (also when the label shown is "uncertain")."""
    return u.scores.get(u.best_guess or u.label, 0.0)


def class_names(utterances: Iterable[Utterance], labels: Sequence[str]) -> list[str]:
    """The score columns: `labels`, then any other class the utterances were scored on (a custom checkpoint)."""
    names = list(labels)
    for u in utterances:
        names += [k for k in u.scores if k not in names]
    return names


def to_csv(utterances: Sequence[Utterance], labels: Sequence[str]) -> str:
    """file, start, end, label, confidence, one column per class score, text."""
    names = class_names(utterances, labels)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "start", "end", "label", "confidence", *names, "text"])
    for u in utterances:
        writer.writerow([u.stream, u.start, u.end, u.label, confidence(u), *(u.scores.get(n, "") for n in names),
                         u.text.strip()])
    return buf.getvalue()


def to_jsonl(utterances: Sequence[Utterance], labels: Sequence[str] = ()) -> str:
    """One `Utterance` event per line, as `--jsonl` writes it (stream/events.py is the schema)."""
    return "".join(json_line(u) for u in utterances)


def cue_text(u: Utterance) -> str:
    """`[anger 0.82] You lied to me again`: the label and its score before the words, on one line."""
    words = " ".join(u.text.split())
    return f"[{u.label} {confidence(u):.2f}]" + (f" {words}" if words else "")


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def to_srt(utterances: Sequence[Utterance], labels: Sequence[str] = ()) -> str:
    """SubRip: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, a blank line after each."""
    return "".join(f"{k}\n{_clock(u.start, ',')} --> {_clock(u.end, ',')}\n{cue_text(u)}\n\n"
                   for k, u in enumerate(utterances, 1))


def to_vtt(utterances: Sequence[Utterance], labels: Sequence[str] = ()) -> str:
    """WebVTT: a header, then cues timed `HH:MM:SS.mmm`; `&`, `<` and `>` escaped as the format requires."""
    def escaped(text: str) -> str:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "WEBVTT\n\n" + "".join(f"{_clock(u.start, '.')} --> {_clock(u.end, '.')}\n{escaped(cue_text(u))}\n\n"
                                  for u in utterances)


FORMATS: dict[str, Callable[[Sequence[Utterance], Sequence[str]], str]] = {
    ".csv": to_csv, ".jsonl": to_jsonl, ".srt": to_srt, ".vtt": to_vtt}


def exporter(out: Path, n_files: int) -> Callable[[Sequence[Utterance], Sequence[str]], str]:
    """The format `out`'s extension names; a UserError for another extension, or for subtitles of several files."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"--out {out}: unknown format {suffix or '(no extension)'!r} (use {', '.join(FORMATS)})")
    if suffix in SUBTITLES and n_files > 1:
        raise UserError(f"--out {out}: subtitles are timed against one recording, and {n_files} files were given "
                        f"(pass one file, or write .csv or .jsonl)")
    return FORMATS[suffix]
