"""Corpus loaders. Each returns a list of `Item`s with canonical labels; nothing is decoded here.

Also the JSONL manifest format (the user-facing way to bring data) and speaker-independent folds.

A line (a manifest line, a TSV row, a corpus file) that cannot be used goes to the caller's
`SkipLog` with its file and line number: by default (no log given) the first one is a UserError
once the whole file is checked, as a library caller expects; the command line passes a lenient log
instead, so the run goes on and reports what it left out (fdrl/skips.py). Every line is bounded
before it is parsed: at most `MAX_TEXT_CHARS` characters of text and `MAX_LINE_BYTES` bytes per
manifest line, so one runaway line cannot take the machine's memory.
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from fdrl import labels
from fdrl.errors import UserError
from fdrl.outputs import path_kind, write_atomic
from fdrl.skips import SkipLog

if TYPE_CHECKING:
    from fdrl.augment import Augment

# A transcript longer than this is a wrong column or a whole document, not an utterance (MiniLM
# reads only its first `encoders.text_max_tokens` tokens anyway): the line is skipped, not tokenized.
MAX_TEXT_CHARS = 10_000
# Seconds: `start`/`end` past a day are a unit mistake (milliseconds, samples), not a segment.
MAX_SECONDS = 86_400.0


@dataclass(frozen=True)
class Item:
    """One labelled utterance before encoding. At least one of `audio` and `text` is set."""

    label: str                    # canonical name (fdrl.labels.CANONICAL)
    speaker: str                  # speaker id; folds never split a speaker ("" when unknown)
    audio: Path | None = None     # any format PyAV decodes
    text: str | None = None       # transcript; None = transcribe the audio with Whisper
    video: Path | None = None
    start: float | None = None    # seconds into `audio` (IEMOCAP-style segments); None = whole file
    end: float | None = None
    corpus: str = ""
    context: tuple[str, ...] = ()  # the turns said before this one in the same conversation, oldest first
    augment: Augment | None = None  # training only: the audio is heard through this perturbation (fdrl/augment.py)
    where: str = field(default="", compare=False)  # "m.jsonl line 7" or the file: for messages, not identity

    @property
    def files(self) -> tuple[Path, ...]:
        """The files this item reads."""
        return tuple(p for p in (self.audio, self.video) if p is not None)


# --- RAVDESS ------------------------------------------------------------------------------------

RAVDESS_AUDIO = {".wav", ".flac"}
# What RAVDESS's actors say, by statement code (SS): its text is known, so a transcript can be scored.
RAVDESS_STATEMENTS = {"01": "kids are talking by the door", "02": "dogs are sitting by the door"}
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")  # MM-VC-EE-II-SS-RR-AA


def load_ravdess(root: Path, skips: SkipLog | None = None) -> list[Item]:
    """Speech clips of RAVDESS under `root/Actor_NN/`, labelled from the file name.

    Accepts the audio-only release (modality 03, .wav or .flac) and the video release (.mp4):
    an audio-visual mp4 (01) serves as both audio and video; a video-only mp4 (02) has no sound
    and is used only as the `video` of a clip whose audio exists. Song (vocal channel 02) is
    skipped. `text` stays None: the two sentences are lexically neutral, ASR transcribes them.
    A file whose name does not parse goes to `skips` (default: a UserError).
    """
    log = skips if skips is not None else SkipLog()
    root = _existing_dir(root, "RAVDESS folder")
    actors = sorted(p for p in root.glob("Actor_*") if p.is_dir())
    if not actors:
        raise UserError(f"{root} has no Actor_NN folders; point at the RAVDESS folder that holds "
                        "Actor_01, Actor_02, ...")
    sound: dict[tuple[str, ...], Path] = {}       # key: (AA, EE, II, SS, RR)
    av: dict[tuple[str, ...], Path] = {}
    silent_video: dict[tuple[str, ...], Path] = {}
    for actor in actors:
        for f in sorted(actor.iterdir()):
            ext = f.suffix.lower()
            if f.name.startswith(".") or ext not in RAVDESS_AUDIO | {".mp4"}:
                continue  # .DS_Store, readmes
            m = _RAVDESS_NAME.match(f.stem)
            if m is None:
                log.skip(str(f), f"not a RAVDESS file name (expected MM-VC-EE-II-SS-RR-AA{f.suffix})")
                continue
            modality, channel, emotion, intensity, statement, rep, actor_id = m.groups()
            if channel != "01":
                continue  # song
            if emotion not in labels.RAVDESS:
                log.skip(str(f), f"unknown RAVDESS emotion code {emotion} (expected 01-08)")
                continue
            key = (actor_id, emotion, intensity, statement, rep)
            if ext in RAVDESS_AUDIO:
                sound[key] = f
            elif modality == "01":
                av[key] = f
            elif modality == "02":
                silent_video[key] = f
    log.check()
    items = []
    for key in sorted(sound.keys() | av.keys()):
        audio = sound.get(key) or av[key]
        items.append(Item(label=labels.RAVDESS[key[1]], speaker=f"ravdess-{key[0]}",
                          audio=audio, video=av.get(key) or silent_video.get(key),
                          corpus="ravdess", where=str(audio)))
    if not items:
        raise UserError(f"{root}: no RAVDESS speech clips (.wav, .flac or audio-visual .mp4) under Actor_NN/")
    return items


# --- GoEmotions ---------------------------------------------------------------------------------

GOEMOTIONS_SPEAKER = "goemotions"  # Reddit comments carry no speaker ids: one pseudo-speaker for all
_EKMAN_NAMES = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")  # labels.txt


def _goemotions_ids(folder: Path) -> dict[int, str]:
    """Label id -> canonical name, from the label list that ships beside the TSV.

    `labels.txt` is the Ekman-grouped list (ids are labels.GOEMOTIONS). The official release instead
    has 28 fine emotions in `emotions.txt` and its own `ekman_mapping.json`; those are folded into
    Ekman with that mapping (neutral is not in it and stays neutral). No list: Ekman ids assumed.
    """
    labels_txt, emotions_txt, ekman_json = folder / "labels.txt", folder / "emotions.txt", folder / "ekman_mapping.json"
    if labels_txt.is_file():
        names = tuple(labels_txt.read_text(encoding="utf-8").split())
        if names != _EKMAN_NAMES:
            raise UserError(f"{labels_txt} lists {', '.join(names)}; expected the Ekman grouping "
                            f"{', '.join(_EKMAN_NAMES)}")
        return dict(labels.GOEMOTIONS)
    if emotions_txt.is_file() and ekman_json.is_file():
        fine_to_ekman = {"neutral": "neutral"}
        for ekman, fine in json.loads(ekman_json.read_text(encoding="utf-8")).items():
            fine_to_ekman.update({name: ekman for name in fine})
        to_canonical = {name: labels.GOEMOTIONS[i] for i, name in enumerate(_EKMAN_NAMES)}
        ids = {}
        for i, name in enumerate(emotions_txt.read_text(encoding="utf-8").split()):
            if fine_to_ekman.get(name) not in to_canonical:
                raise UserError(f"{ekman_json} does not map '{name}' from {emotions_txt} onto an Ekman label")
            ids[i] = to_canonical[fine_to_ekman[name]]
        return ids
    return dict(labels.GOEMOTIONS)


def load_goemotions(tsv: Path, single_label: bool = True, skips: SkipLog | None = None,
                    max_text_chars: int = MAX_TEXT_CHARS) -> list[Item]:
    """Text-only items from a GoEmotions split (`text<TAB>ids<TAB>comment_id`, no header).

    Text fields that contain quotes are CSV-quoted (inner quotes doubled), so the file is read with the
    csv module, not split on tabs. With `single_label` (the standard protocol) only comments with
    exactly one label are kept; otherwise a comment yields one item per label. Every item has the
    pseudo-speaker GOEMOTIONS_SPEAKER, which `speaker_folds` keeps out of validation. A row that
    cannot be used (bytes that are not UTF-8, a wrong field count, bad ids, a text over
    `max_text_chars`) goes to `skips` with its line (default: a UserError once the file is read).
    """
    log = skips if skips is not None else SkipLog()
    tsv = _existing_file(tsv, "GoEmotions TSV")
    ids = _goemotions_ids(tsv.parent)
    items = []
    # surrogateescape: a byte that is not UTF-8 costs its row, not the whole file (checked per row below).
    with tsv.open(encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:  # e.g. a field over the csv module's size limit
                log.skip(f"{tsv} line {reader.line_num}", f"not a TSV row ({e})")
                continue
            where = f"{tsv} line {reader.line_num}"
            if not all(_is_utf8(field) for field in row):
                log.skip(where, "not UTF-8 text (re-save the file as UTF-8)")
                continue
            if len(row) != 3:
                log.skip(where, f"expected text<TAB>label ids<TAB>comment id, got {len(row)} fields")
                continue
            text = row[0].strip()
            if len(text) > max_text_chars:
                log.skip(where, _too_long(len(text), max_text_chars))
                continue
            try:
                names = {ids[int(i)] for i in row[1].split(",")}
            except (ValueError, KeyError):
                log.skip(where, f"bad label ids '{row[1][:50]}' (expected comma-separated ids 0-{max(ids)})")
                continue
            if not text or (single_label and len(names) != 1):
                continue
            items.extend(Item(label=name, speaker=GOEMOTIONS_SPEAKER, text=text, corpus="goemotions", where=where)
                         for name in labels.CANONICAL if name in names)
    log.check()
    if not items:
        raise UserError(f"{tsv} has no usable rows")
    return items


def _is_utf8(text: str) -> bool:
    """False when `text` holds bytes that were not UTF-8 (read with errors="surrogateescape")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _too_long(n: int, limit: int) -> str:
    return (f"'text' is {n} characters long, over the limit of {limit} "
            "(a transcript of one utterance is expected: check the line)")


# --- TESS and EMOVO -----------------------------------------------------------------------------


def load_tess(root: Path, skips: SkipLog | None = None) -> list[Item]:
    """TESS clips under `root/OAF/` and `root/YAF/` (`<speaker>_<word>_<emotion>.flac`).

    The speaker is the folder, not the file name (one file of the public copy is misnamed).
    `text` stays None: the carrier phrase is transcribed by ASR, as live speech would be.
    """
    return _speaker_folders(root, "TESS", "tess", labels.TESS, lambda stem: stem.rsplit("_", 1)[-1], skips)


def load_emovo(root: Path, skips: SkipLog | None = None) -> list[Item]:
    """EMOVO (Italian) clips under `root/<f1..m3>/` (`<emotion>-<speaker>-<sentence>.flac`)."""
    return _speaker_folders(root, "EMOVO", "emovo", labels.EMOVO, lambda stem: stem.split("-", 1)[0], skips)


def _speaker_folders(root: Path, name: str, corpus: str, mapping: dict[str, str],
                     emotion_of: Callable[[str], str], skips: SkipLog | None) -> list[Item]:
    """Clips in one folder per speaker, the emotion read from each file name by `emotion_of`."""
    log = skips if skips is not None else SkipLog()
    root = _existing_dir(root, f"{name} folder")
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(folder.iterdir()):
            if f.name.startswith(".") or f.suffix.lower() not in RAVDESS_AUDIO:
                continue
            emotion = emotion_of(f.stem)
            if emotion not in mapping:
                log.skip(str(f), f"unknown {name} emotion '{emotion}' in the file name (expected one of {', '.join(mapping)})")
                continue
            items.append(Item(label=mapping[emotion], speaker=f"{corpus}-{folder.name}", audio=f, corpus=corpus, where=str(f)))
    log.check()
    if not items:
        raise UserError(f"{root}: no {name} clips (.wav or .flac) in its speaker folders")
    return items


# --- DailyDialog -------------------------------------------------------------------------------

DAILYDIALOG_SPLITS = ("train", "validation", "test")


def load_dailydialog(root: Path, split: str, skips: SkipLog | None = None,
                     max_text_chars: int = MAX_TEXT_CHARS) -> list[Item]:
    """Every turn of a DailyDialog split as a text item, with the turns before it as `context`.

    Reads `root/<split>/dialogues_<split>.txt` (turns joined by `__eou__`) and
    `dialogues_emotion_<split>.txt` (one code per turn). A dialogue whose turn and code counts
    differ (train line 7852 of the official release) goes to `skips` whole: which code belongs to
    which turn cannot be known. Each dialogue is its own speaker id, so folds never split one.
    """
    if split not in DAILYDIALOG_SPLITS:
        raise UserError(f"DailyDialog split '{split}' does not exist (use one of {', '.join(DAILYDIALOG_SPLITS)})")
    log = skips if skips is not None else SkipLog()
    folder = _existing_dir(Path(root) / split, "DailyDialog split folder")
    texts = _existing_file(folder / f"dialogues_{split}.txt", "DailyDialog dialogues")
    codes = _existing_file(folder / f"dialogues_emotion_{split}.txt", "DailyDialog emotions")
    items: list[Item] = []
    with open(texts, encoding="utf-8", errors="surrogateescape") as t, open(codes, encoding="utf-8", errors="surrogateescape") as c:
        for n, (dialogue, emotions) in enumerate(zip(t, c), start=1):
            where = f"{texts} line {n}"
            turns = [_detokenize(turn) for turn in dialogue.split("__eou__")]
            turns = turns[:-1] if turns and not turns[-1] else turns
            try:
                ids = [int(code) for code in emotions.split()]
            except ValueError:
                log.skip(where, f"emotion codes are not integers in {codes} line {n}")
                continue
            if len(ids) != len(turns) or not turns:
                log.skip(where, f"{len(turns)} turns but {len(ids)} emotion codes (line {n} of {codes.name}): skipped whole")
                continue
            if not all(_is_utf8(turn) for turn in turns) or any(code not in labels.DAILYDIALOG for code in ids):
                log.skip(where, "not UTF-8, or an emotion code outside 0-6")
                continue
            if any(len(turn) > max_text_chars for turn in turns):
                log.skip(where, _too_long(max(map(len, turns)), max_text_chars))
                continue
            items += [Item(label=labels.DAILYDIALOG[code], speaker=f"dailydialog-{split}-{n}", text=turn,
                           corpus="dailydialog", context=tuple(turns[:k]), where=f"{where} turn {k + 1}")
                      for k, (turn, code) in enumerate(zip(turns, ids))]
    log.check()
    return items


def _detokenize(turn: str) -> str:
    """DailyDialog's tokenized text ("Say , Jim , how ?") written as a transcript would be ("Say, Jim, how?")."""
    return re.sub(r" ([,.?!;:%)])|([($]) ", r"\1\2", " ".join(turn.split()))


# --- IEMOCAP ------------------------------------------------------------------------------------

_IEMOCAP_LABEL = re.compile(r"^\[[\d.]+ - [\d.]+\]\s+(Ses\d\d[FM]_\S+)\s+(\w+)\s+\[")
_IEMOCAP_TEXT = re.compile(r"^(Ses\d\d[FM]_\S+) \[[\d.]+-[\d.]+\]:\s*(.*)$")


def iemocap_speaker(utterance: str) -> str:
    """'Ses01F_impro01_M000' -> 'Ses01M': the session, then the gender letter of who speaks.

    The letter after 'Ses01' is who wore the mocap markers in the dialog; the speaker is the letter
    that starts the last field. Ten actors, two per session, so this is a true speaker id, and its
    prefix 'SesNN' is the session (group on `speaker[:5]` for leave-one-session-out).
    """
    return utterance[:5] + utterance.rsplit("_", 1)[1][0]


def _iemocap_labels(path: Path) -> list[tuple[str, str]]:
    """(utterance id, category code) for each turn of one EmoEvaluation file.

    Only the `[start - end]\\tid\\tcode\\t[V, A, D]` lines count; the header, blank lines and the
    per-evaluator lines (`C-E1:\\t...`, `A-E3:\\t...`) are skipped.
    """
    return [m.groups() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if (m := _IEMOCAP_LABEL.match(line))]


def _iemocap_texts(path: Path) -> dict[str, str]:
    """Utterance id -> transcript; lines of other shapes (untimed or unlabelled turns) are skipped."""
    if not path.is_file():
        return {}
    return {m[1]: m[2].strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if (m := _IEMOCAP_TEXT.match(line))}


def load_iemocap(root: Path, sessions: Iterable[int] = (1, 2, 3, 4, 5), skips: SkipLog | None = None) -> list[Item]:
    """The 4-class IEMOCAP protocol from the official `IEMOCAP_full_release` layout.

    Per-utterance wavs come from `SessionN/sentences/wav/<dialog>/`, labels from
    `SessionN/dialog/EmoEvaluation/<dialog>.txt` (codes mapped by labels.IEMOCAP; the others, e.g.
    fru, sur, xxx, dropped), text from `SessionN/dialog/transcriptions/<dialog>.txt`. The video is
    one AVI per dialog showing both actors, not per-utterance, so it is not used. A labelled turn
    whose wav is missing goes to `skips` (default: a UserError).
    """
    log = skips if skips is not None else SkipLog()
    root = _existing_dir(root, "IEMOCAP folder")
    items = []
    for n in sessions:
        if n not in range(1, 6):
            raise UserError(f"IEMOCAP session {n} does not exist (sessions are 1-5)")
        session = root / f"Session{n}"
        evaluations = sorted(p for p in (session / "dialog" / "EmoEvaluation").glob("*.txt")
                             if not p.name.startswith("."))  # the release ships macOS '._' files
        if not evaluations:
            raise UserError(f"{session}/dialog/EmoEvaluation has no label files; point at "
                            "IEMOCAP_full_release (the folder that holds Session1 ... Session5)")
        for evaluation in evaluations:
            texts = _iemocap_texts(session / "dialog" / "transcriptions" / evaluation.name)
            for utterance, code in _iemocap_labels(evaluation):
                if code not in labels.IEMOCAP:
                    continue
                wav = session / "sentences" / "wav" / utterance.rsplit("_", 1)[0] / f"{utterance}.wav"
                if not wav.is_file():
                    log.skip(str(wav), f"not found (labelled in {evaluation}); is the IEMOCAP copy complete?")
                    continue
                items.append(Item(label=labels.IEMOCAP[code], speaker=iemocap_speaker(utterance), audio=wav,
                                  text=texts.get(utterance) or None, corpus="iemocap", where=str(wav)))
    log.check()
    return items


# --- JSONL manifests ----------------------------------------------------------------------------

MANIFEST_KEYS = ("label", "speaker", "audio", "video", "text", "start", "end", "corpus", "context")


def _manifest_path(value: object, key: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' must be a file path string, got {value!r}")
    if "\0" in value:
        raise ValueError(f"'{key}' holds a NUL character, which no file name can")
    path = Path(value).expanduser()
    path = Path(os.path.normpath(path if path.is_absolute() else base / path))
    kind = path_kind(path)
    if kind == "missing":
        raise ValueError(f"{key} file not found: {path}")
    if kind != "a file":
        raise ValueError(f"{key} {path} is {kind}, not a file")
    return path


def _manifest_time(value: object, key: str) -> float:
    # Compared before any float conversion: a huge JSON integer (10**400) overflows a float.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_SECONDS:
        raise ValueError(f"'{key}' must be a number of seconds >= 0 and at most {MAX_SECONDS:.0f} (24 h), "
                         f"got {str(value)[:40]}")
    return float(value)


def _manifest_context(value: object, max_text_chars: int) -> tuple[str, ...]:
    """`"context"`: the turns said before this line's, oldest first, as a list of strings, bounded
    together like one `text` (only the last `encoders.text_context_turns` are read)."""
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"'context' must be a list of strings (the previous turns, oldest first), got {str(value)[:40]}")
    total = sum(len(t) for t in value)
    if total > max_text_chars:
        raise ValueError(f"'context' is {total} characters long in all, over the limit of {max_text_chars} "
                         "(keep the last few turns only)")
    return tuple(t.strip() for t in value)


def _manifest_item(record: object, allowed: Sequence[str], base: Path, max_text_chars: int = MAX_TEXT_CHARS) -> Item:
    """One manifest record -> Item; raises ValueError with the problem (the caller adds the line)."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for key in record:
        if key not in MANIFEST_KEYS:
            close = difflib.get_close_matches(key[:100], MANIFEST_KEYS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown key '{key[:100]}' ({hint}allowed: {', '.join(MANIFEST_KEYS)})")
    fields = {k: v for k, v in record.items() if v is not None}  # null = absent
    for key in ("label", "speaker", "text", "corpus"):
        if key in fields and not isinstance(fields[key], str):
            raise ValueError(f"'{key}' must be a string, got {str(fields[key])[:40]}")
    if "label" not in fields:
        raise ValueError("missing 'label'")
    if fields["label"] not in allowed:
        raise ValueError(f"unknown label '{fields['label'][:100]}' (expected one of {', '.join(allowed)})")
    if "audio" not in fields and "text" not in fields:
        raise ValueError("needs 'audio' or 'text' (or both)")
    text = fields.get("text")
    if text is not None and not text.strip():
        raise ValueError("'text' is empty; drop the key to transcribe the audio instead")
    if text is not None and len(text) > max_text_chars:
        raise ValueError(_too_long(len(text), max_text_chars))
    start = _manifest_time(fields["start"], "start") if "start" in fields else None
    end = _manifest_time(fields["end"], "end") if "end" in fields else None
    if (start is not None or end is not None) and "audio" not in fields:
        raise ValueError("'start'/'end' need 'audio'")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"'end' ({end}) must be after 'start' ({start})")
    return Item(label=fields["label"], speaker=fields.get("speaker", ""),
                audio=_manifest_path(fields["audio"], "audio", base) if "audio" in fields else None,
                text=text.strip() if text is not None else None,
                video=_manifest_path(fields["video"], "video", base) if "video" in fields else None,
                start=start, end=end, corpus=fields.get("corpus", ""),
                context=_manifest_context(fields["context"], max_text_chars) if "context" in fields else ())


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            raise ValueError(f"key '{k[:100]}' appears twice")
        seen.add(k)
    return dict(pairs)


def manifest_line_limit(max_text_chars: int = MAX_TEXT_CHARS) -> int:
    """The longest manifest line read: the longest text, every character escaped (\\uXXXX\\uXXXX is
    12 bytes), plus room for the other keys."""
    return 12 * max_text_chars + 65_536


def _bounded_lines(f: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """The lines of `f` without their line end; None for a line over `limit` bytes, which is read
    past in pieces and never held whole."""
    while line := f.readline(limit + 1):
        if len(line) > limit:
            while line and not line.endswith(b"\n"):
                line = f.readline(1 << 20)
            yield None
            continue
        yield line.rstrip(b"\r\n")


def load_manifest(path: Path, labels: Sequence[str], skips: SkipLog | None = None,
                  max_text_chars: int = MAX_TEXT_CHARS) -> list[Item]:
    """Items from a JSONL manifest, one object per line, every line validated before returning.

    Keys: `label` (one of `labels`) and at least one of `audio`/`text` are required; `speaker`
    (default ""), `video`, `start`/`end` (seconds into `audio`, at most a day), `corpus` and
    `context` (the previous turns, a list of strings: `encoders.text_context_turns`) are optional; paths are relative to the manifest's folder. Any unknown key is an error, so a typo
    never passes silently. A bad line (not UTF-8, not JSON, a bad value, a text over
    `max_text_chars`, a line over `manifest_line_limit`) goes to `skips` with the manifest and its
    1-based line. A line that repeats an earlier item is dropped with a warning (`SkipLog.repeat`):
    scoring or training on it twice would silently weigh it double. With no `skips`, the first bad line is a UserError that
    also says how many more there are, so a long run never starts on a manifest that fails on line 9000.
    """
    log = skips if skips is not None else SkipLog()
    path = _existing_file(path, "manifest")
    base = path.absolute().parent
    limit = manifest_line_limit(max_text_chars)
    items: list[Item] = []
    first_seen: dict[Item, int] = {}
    with path.open("rb") as f:
        for number, raw in enumerate(_bounded_lines(f, limit), start=1):
            where = f"{path} line {number}"
            try:
                if raw is None:
                    raise ValueError(f"the line is over {limit} bytes (one short JSON object per line is expected)")
                if number == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a BOM (Windows editors) is not JSON
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"not UTF-8 text ({e.reason} at byte {e.start}; re-save the file as UTF-8)") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line, object_pairs_hook=_no_duplicate_keys)
                except json.JSONDecodeError as e:
                    raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None
                except RecursionError:
                    raise ValueError("invalid JSON (nested too deeply)") from None
                item = _manifest_item(record, labels, base, max_text_chars)
            except ValueError as e:
                log.skip(where, str(e))
                continue
            if item in first_seen:
                log.repeat(where, f"line {first_seen[item]}")
                continue
            first_seen[item] = number
            items.append(dataclasses.replace(item, where=where))
    log.check()
    if not items:
        raise UserError(f"{path} has no items; write one JSON object per line")
    return items


def write_manifest(path: Path, items: Iterable[Item]) -> None:
    """Write `items` as a JSONL manifest that `load_manifest` reads back to the same items.

    File paths are stored relative to the manifest's folder, so the manifest and its data can move
    together. Written atomically (fdrl.outputs): a crash never leaves half a manifest behind.
    """
    path = Path(path).expanduser()
    base = path.absolute().parent
    base.mkdir(parents=True, exist_ok=True)
    lines = []
    for item in items:
        record: dict[str, object] = {"label": item.label}
        if item.speaker:
            record["speaker"] = item.speaker
        for key in ("audio", "video"):
            if (file := getattr(item, key)) is not None:
                record[key] = Path(os.path.relpath(Path(file).absolute(), base)).as_posix()
        for key in ("text", "start", "end"):
            if (value := getattr(item, key)) is not None:
                record[key] = value
        if item.corpus:
            record["corpus"] = item.corpus
        if item.context:
            record["context"] = list(item.context)
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    write_atomic(path, "".join(lines))


# --- speaker-independent folds ------------------------------------------------------------------


def speaker_group(item: Item) -> str | None:
    """Default fold group: the speaker; None (always train) for GoEmotions' pseudo-speaker."""
    return None if item.speaker == GOEMOTIONS_SPEAKER else item.speaker


def _gender(group: str) -> str:
    """'F'/'M' for the speaker ids whose gender is known (RAVDESS, IEMOCAP, TESS, EMOVO), else ''."""
    if m := re.fullmatch(r"ravdess-(\d+)", group):
        return "F" if int(m[1]) % 2 == 0 else "M"  # RAVDESS: even actor numbers are female
    if re.fullmatch(r"Ses\d\d[FM]", group):
        return group[-1]
    if group.startswith("tess-"):
        return "F"  # both TESS speakers are women
    if m := re.fullmatch(r"emovo-([fm])\d", group):
        return m[1].upper()
    return ""


def corpus_folds(items: Sequence[Item]) -> list[tuple[list[int], list[int]]]:
    """Leave-one-corpus-out: one (train, validation) split per corpus, that corpus held out whole.

    The honest proxy for a corpus never heard: other speakers, microphones, sentences and (with
    EMOVO) another language. Needs items from at least two corpora.
    """
    corpora = sorted({it.corpus for it in items})
    if "" in corpora or len(corpora) < 2:
        raise UserError(f"leave-one-corpus-out needs items from at least 2 named corpora, got {corpora or 'none'} "
                        "(add --tess/--emovo, or \"corpus\" to the manifest lines)")
    return [([i for i, it in enumerate(items) if it.corpus != c], [i for i, it in enumerate(items) if it.corpus == c])
            for c in corpora]


def speaker_folds(items: Sequence[Item], k: int, seed: int = 0,
                  group_of: Callable[[Item], str | None] = speaker_group) -> list[tuple[list[int], list[int]]]:
    """k (train indices, validation indices) splits in which no group is on both sides.

    Groups (speakers by default) are shuffled with `seed` within each gender, then dealt to the
    folds in turn, so fold sizes in groups differ by at most one and genders are spread evenly
    (RAVDESS actors 1-20, k=5: two women and two men per fold). Items whose group is None
    (GoEmotions text) are in every training side and no validation side. Pass
    `group_of=lambda it: it.speaker[:5]` on IEMOCAP with k=5 for leave-one-session-out.
    """
    groups = [group_of(item) for item in items]
    if "" in groups:
        raise UserError(f"{groups.count('')} items have no speaker id; speaker-independent folds need one "
                        "(add \"speaker\" to the manifest lines)")
    names = sorted({g for g in groups if g is not None})
    if k < 2 or k > len(names):
        raise UserError(f"cannot make {k} speaker-independent folds from {len(names)} speakers "
                        f"(use a fold count from 2 to {len(names)})")
    rng = random.Random(seed)
    order: list[str] = []
    for gender in sorted({_gender(g) for g in names}):
        stratum = [g for g in names if _gender(g) == gender]
        rng.shuffle(stratum)
        order += stratum
    fold_of = {g: i % k for i, g in enumerate(order)}
    folds = []
    for fold in range(k):
        val = [i for i, g in enumerate(groups) if g is not None and fold_of[g] == fold]
        train = [i for i, g in enumerate(groups) if g is None or fold_of[g] != fold]
        folds.append((train, val))
    return folds


# --- helpers ------------------------------------------------------------------------------------


def _existing_file(path: Path, what: str) -> Path:
    path = Path(path).expanduser()
    kind = path_kind(path)
    if kind == "missing":
        raise UserError(f"{what} {path} not found")
    if kind != "a file":
        raise UserError(f"{what} {path} is {kind}, not a file (pass the {what} file itself)")
    return path


def _existing_dir(path: Path, what: str) -> Path:
    path = Path(path).expanduser().absolute()
    kind = path_kind(path)
    if kind == "missing":
        raise UserError(f"{what} {path} not found")
    if kind != "a folder":
        raise UserError(f"{what} {path} is {kind}, not a folder")
    return path
