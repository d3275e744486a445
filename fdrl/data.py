"""Corpus loaders. Each returns a list of `Item`s with canonical labels; nothing is decoded here.

Also the JSONL manifest format (the user-facing way to bring data) and speaker-independent folds.
"""
from __future__ import annotations

import csv
import difflib
import json
import math
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fdrl import labels
from fdrl.errors import UserError


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


# --- RAVDESS ------------------------------------------------------------------------------------

RAVDESS_AUDIO = {".wav", ".flac"}
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")  # MM-VC-EE-II-SS-RR-AA


def load_ravdess(root: Path) -> list[Item]:
    """Speech clips of RAVDESS under `root/Actor_NN/`, labelled from the file name.

    Accepts the audio-only release (modality 03, .wav or .flac) and the video release (.mp4):
    an audio-visual mp4 (01) serves as both audio and video; a video-only mp4 (02) has no sound
    and is used only as the `video` of a clip whose audio exists. Song (vocal channel 02) is
    skipped. `text` stays None: the two sentences are lexically neutral, ASR transcribes them.
    """
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
                raise UserError(f"{f}: not a RAVDESS file name (expected MM-VC-EE-II-SS-RR-AA{f.suffix})")
            modality, channel, emotion, intensity, statement, rep, actor_id = m.groups()
            if channel != "01":
                continue  # song
            if emotion not in labels.RAVDESS:
                raise UserError(f"{f}: unknown RAVDESS emotion code {emotion} (expected 01-08)")
            key = (actor_id, emotion, intensity, statement, rep)
            if ext in RAVDESS_AUDIO:
                sound[key] = f
            elif modality == "01":
                av[key] = f
            elif modality == "02":
                silent_video[key] = f
    items = []
    for key in sorted(sound.keys() | av.keys()):
        items.append(Item(label=labels.RAVDESS[key[1]], speaker=f"ravdess-{key[0]}",
                          audio=sound.get(key) or av[key], video=av.get(key) or silent_video.get(key),
                          corpus="ravdess"))
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


def load_goemotions(tsv: Path, single_label: bool = True) -> list[Item]:
    """Text-only items from a GoEmotions split (`text<TAB>ids<TAB>comment_id`, no header).

    Text fields that contain quotes are CSV-quoted (inner quotes doubled), so the file is read with the
    csv module, not split on tabs. With `single_label` (the standard protocol) only comments with
    exactly one label are kept; otherwise a comment yields one item per label. Every item has the
    pseudo-speaker GOEMOTIONS_SPEAKER, which `speaker_folds` keeps out of validation.
    """
    tsv = _existing_file(tsv, "GoEmotions TSV")
    ids = _goemotions_ids(tsv.parent)
    items = []
    with tsv.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        for row in reader:
            where = f"{tsv} line {reader.line_num}"
            if len(row) != 3:
                raise UserError(f"{where}: expected text<TAB>label ids<TAB>comment id, got {len(row)} fields")
            text = row[0].strip()
            try:
                names = {ids[int(i)] for i in row[1].split(",")}
            except (ValueError, KeyError):
                raise UserError(f"{where}: bad label ids '{row[1]}' "
                                f"(expected comma-separated ids 0-{max(ids)})") from None
            if not text or (single_label and len(names) != 1):
                continue
            items.extend(Item(label=name, speaker=GOEMOTIONS_SPEAKER, text=text, corpus="goemotions")
                         for name in labels.CANONICAL if name in names)
    if not items:
        raise UserError(f"{tsv} has no usable rows")
    return items


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


def load_iemocap(root: Path, sessions: Iterable[int] = (1, 2, 3, 4, 5)) -> list[Item]:
    """The 4-class IEMOCAP protocol from the official `IEMOCAP_full_release` layout.

    Per-utterance wavs come from `SessionN/sentences/wav/<dialog>/`, labels from
    `SessionN/dialog/EmoEvaluation/<dialog>.txt` (codes mapped by labels.IEMOCAP; the others, e.g.
    fru, sur, xxx, dropped), text from `SessionN/dialog/transcriptions/<dialog>.txt`. The video is
    one AVI per dialog showing both actors, not per-utterance, so it is not used.
    """
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
                    raise UserError(f"{wav} not found (labelled in {evaluation}); is the IEMOCAP copy complete?")
                items.append(Item(label=labels.IEMOCAP[code], speaker=iemocap_speaker(utterance), audio=wav,
                                  text=texts.get(utterance) or None, corpus="iemocap"))
    return items


# --- JSONL manifests ----------------------------------------------------------------------------

MANIFEST_KEYS = ("label", "speaker", "audio", "video", "text", "start", "end", "corpus")


def _manifest_path(value: object, key: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' must be a file path string, got {value!r}")
    path = Path(value).expanduser()
    path = Path(os.path.normpath(path if path.is_absolute() else base / path))
    if not path.is_file():
        raise ValueError(f"{key} file not found: {path}")
    return path


def _manifest_time(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"'{key}' must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _manifest_item(record: object, allowed: Sequence[str], base: Path) -> Item:
    """One manifest record -> Item; raises ValueError with the problem (the caller adds the line)."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for key in record:
        if key not in MANIFEST_KEYS:
            close = difflib.get_close_matches(key, MANIFEST_KEYS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown key '{key}' ({hint}allowed: {', '.join(MANIFEST_KEYS)})")
    fields = {k: v for k, v in record.items() if v is not None}  # null = absent
    for key in ("label", "speaker", "text", "corpus"):
        if key in fields and not isinstance(fields[key], str):
            raise ValueError(f"'{key}' must be a string, got {fields[key]!r}")
    if "label" not in fields:
        raise ValueError("missing 'label'")
    if fields["label"] not in allowed:
        raise ValueError(f"unknown label '{fields['label']}' (expected one of {', '.join(allowed)})")
    if "audio" not in fields and "text" not in fields:
        raise ValueError("needs 'audio' or 'text' (or both)")
    text = fields.get("text")
    if text is not None and not text.strip():
        raise ValueError("'text' is empty; drop the key to transcribe the audio instead")
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
                start=start, end=end, corpus=fields.get("corpus", ""))


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise ValueError(f"key '{k}' appears twice")
    return dict(pairs)


def load_manifest(path: Path, labels: Sequence[str]) -> list[Item]:
    """Items from a JSONL manifest, one object per line, every line validated before returning.

    Keys: `label` (one of `labels`) and at least one of `audio`/`text` are required; `speaker`
    (default ""), `video`, `start`/`end` (seconds into `audio`) and `corpus` are optional; paths are
    relative to the manifest's folder. Any unknown key is an error, so a typo never passes
    silently. The error names the manifest and the 1-based line, plus how many more lines are bad,
    so a long run never starts on a manifest that fails on line 9000.
    """
    path = _existing_file(path, "manifest")
    base = path.absolute().parent
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a BOM (Windows editors) is not JSON
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    items, errors = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            try:
                record = json.loads(line, object_pairs_hook=_no_duplicate_keys)
            except json.JSONDecodeError as e:
                raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None
            items.append(_manifest_item(record, labels, base))
        except ValueError as e:
            errors.append(f"{path} line {number}: {e}")
    if errors:
        more = f" (and {len(errors) - 1} more bad lines)" if len(errors) > 1 else ""
        raise UserError(errors[0] + more)
    if not items:
        raise UserError(f"{path} has no items; write one JSON object per line")
    return items


def write_manifest(path: Path, items: Iterable[Item]) -> None:
    """Write `items` as a JSONL manifest that `load_manifest` reads back to the same items.

    File paths are stored relative to the manifest's folder, so the manifest and its data can move
    together. Written to a temporary file first: a crash never leaves half a manifest behind.
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
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)


# --- speaker-independent folds ------------------------------------------------------------------


def speaker_group(item: Item) -> str | None:
    """Default fold group: the speaker; None (always train) for GoEmotions' pseudo-speaker."""
    return None if item.speaker == GOEMOTIONS_SPEAKER else item.speaker


def _gender(group: str) -> str:
    """'F'/'M' for the speaker ids whose gender is known (RAVDESS, IEMOCAP), else ''."""
    if m := re.fullmatch(r"ravdess-(\d+)", group):
        return "F" if int(m[1]) % 2 == 0 else "M"  # RAVDESS: even actor numbers are female
    if re.fullmatch(r"Ses\d\d[FM]", group):
        return group[-1]
    return ""


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
    if not path.is_file():
        raise UserError(f"{what} {path} not found")
    return path


def _existing_dir(path: Path, what: str) -> Path:
    path = Path(path).expanduser().absolute()
    if not path.is_dir():
        raise UserError(f"{what} {path} not found")
    return path
