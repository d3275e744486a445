"""Corpus loaders, manifest validation and speaker folds, on small fixtures built in tmp_path."""
from __future__ import annotations

import json
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from fdrl import data, labels
from fdrl.data import (GOEMOTIONS_SPEAKER, Item, iemocap_speaker, load_goemotions, load_iemocap,
                       load_manifest, load_ravdess, speaker_folds, write_manifest)
from fdrl.errors import UserError
from fdrl.skips import SkipLog


def write_wav(path: Path, seconds: float = 0.1, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (np.sin(np.arange(int(seconds * rate)) * 0.05) * 3000).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def write_flac(path: Path, seconds: float = 0.1, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, int(seconds * rate)), np.int16), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


# --- RAVDESS ------------------------------------------------------------------------------------


def test_ravdess_audio_release(tmp_path: Path) -> None:
    a1, a2 = tmp_path / "Actor_01", tmp_path / "Actor_02"
    write_flac(a1 / "03-01-01-01-01-01-01.flac")          # neutral
    write_flac(a1 / "03-01-02-02-01-02-01.flac")          # calm -> neutral
    write_flac(a1 / "03-01-05-02-02-01-01.flac")          # angry
    write_flac(a1 / "03-02-03-01-01-01-01.flac")          # song: skipped
    (a1 / ".DS_Store").write_bytes(b"junk")
    write_wav(a2 / "03-01-08-01-01-01-02.wav")            # surprised, official .wav
    (tmp_path / "README.txt").write_text("not an actor")

    items = load_ravdess(tmp_path)

    assert [(i.label, i.speaker, i.audio.name) for i in items] == [
        ("neutral", "ravdess-01", "03-01-01-01-01-01-01.flac"),
        ("neutral", "ravdess-01", "03-01-02-02-01-02-01.flac"),
        ("anger", "ravdess-01", "03-01-05-02-02-01-01.flac"),
        ("surprise", "ravdess-02", "03-01-08-01-01-01-02.wav"),
    ]
    assert all(i.audio.is_absolute() and i.audio.is_file() for i in items)
    assert all(i.text is None and i.video is None and i.corpus == "ravdess" for i in items)


def test_ravdess_video_release(tmp_path: Path) -> None:
    actor = tmp_path / "Actor_03"
    actor.mkdir()
    (actor / "01-01-04-01-01-01-03.mp4").write_bytes(b"av")      # audio-visual only: sound + picture
    (actor / "01-01-06-01-01-01-03.mp4").write_bytes(b"av")      # AV and video-only of the same take
    (actor / "02-01-06-01-01-01-03.mp4").write_bytes(b"silent")
    write_wav(actor / "03-01-07-01-01-01-03.wav")                 # audio-only + video-only of one take
    (actor / "02-01-07-01-01-01-03.mp4").write_bytes(b"silent")
    (actor / "02-01-03-01-01-01-03.mp4").write_bytes(b"silent")  # video-only, no sound at all: skipped

    items = {i.label: i for i in load_ravdess(tmp_path)}

    assert sorted(items) == ["disgust", "fear", "sadness"]
    assert items["sadness"].audio == items["sadness"].video == actor / "01-01-04-01-01-01-03.mp4"
    assert items["fear"].audio == items["fear"].video == actor / "01-01-06-01-01-01-03.mp4"
    assert items["disgust"].audio == actor / "03-01-07-01-01-01-03.wav"
    assert items["disgust"].video == actor / "02-01-07-01-01-01-03.mp4"


def test_ravdess_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_ravdess(tmp_path / "missing")
    with pytest.raises(UserError, match="no Actor_NN folders"):
        load_ravdess(tmp_path)
    (tmp_path / "Actor_01").mkdir()
    with pytest.raises(UserError, match="no RAVDESS speech clips"):
        load_ravdess(tmp_path)
    write_wav(tmp_path / "Actor_01" / "angry-take-1.wav")
    with pytest.raises(UserError, match="angry-take-1.wav: not a RAVDESS file name"):
        load_ravdess(tmp_path)


# --- GoEmotions ---------------------------------------------------------------------------------

GOEMOTIONS_TSV = (
    "My favourite food is anything I didn't have to cook myself.\t4\teebbqej\n"
    "WHY THE FUCK IS BAYLESS ISOING\t0\teezlygj\n"
    '"Three words, no subtlety. ""Dude. Stop. Seriously."" "\t0\teetq9g0\n'   # csv-quoted, inner tab-free
    "I love this, thanks!\t3,4\teeaaaaa\n"                                     # multi-label
    "what a twist\t6\teebbbbb\n"
    "Ugh, gross and scary\t1,2,5\teecccc\n"                                    # three labels
)


def test_goemotions_single_label(tmp_path: Path) -> None:
    tsv = tmp_path / "train.tsv"
    tsv.write_text(GOEMOTIONS_TSV, encoding="utf-8")
    (tmp_path / "labels.txt").write_text("anger\ndisgust\nfear\njoy\nneutral\nsadness\nsurprise\n")

    items = load_goemotions(tsv)

    assert [(i.label, i.text) for i in items] == [
        ("neutral", "My favourite food is anything I didn't have to cook myself."),
        ("anger", "WHY THE FUCK IS BAYLESS ISOING"),
        ("anger", 'Three words, no subtlety. "Dude. Stop. Seriously."'),
        ("surprise", "what a twist"),
    ]
    assert all(i.speaker == GOEMOTIONS_SPEAKER and i.audio is None and i.corpus == "goemotions" for i in items)


def test_goemotions_multi_label(tmp_path: Path) -> None:
    tsv = tmp_path / "dev.tsv"
    tsv.write_text(GOEMOTIONS_TSV, encoding="utf-8")   # no labels.txt: Ekman ids assumed

    items = load_goemotions(tsv, single_label=False)

    assert len(items) == 4 + 2 + 3
    assert [i.label for i in items if i.text == "I love this, thanks!"] == ["neutral", "happiness"]
    assert [i.label for i in items if i.text.startswith("Ugh")] == ["sadness", "fear", "disgust"]


def test_goemotions_official_28_label_release(tmp_path: Path) -> None:
    fine = ["admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion", "curiosity",
            "desire", "disappointment", "disapproval", "disgust", "embarrassment", "excitement", "fear",
            "gratitude", "grief", "joy", "love", "nervousness", "optimism", "pride", "realization", "relief",
            "remorse", "sadness", "surprise", "neutral"]
    (tmp_path / "emotions.txt").write_text("\n".join(fine) + "\n")
    (tmp_path / "ekman_mapping.json").write_text(json.dumps({
        "anger": ["anger", "annoyance", "disapproval"], "disgust": ["disgust"], "fear": ["fear", "nervousness"],
        "joy": ["joy", "amusement", "approval", "excitement", "gratitude", "love", "optimism", "relief",
                "pride", "admiration", "desire", "caring"],
        "sadness": ["sadness", "disappointment", "embarrassment", "grief", "remorse"],
        "surprise": ["surprise", "realization", "confusion", "curiosity"]}))
    tsv = tmp_path / "train.tsv"
    tsv.write_text("so annoying and wrong\t2,3\ta1\n"     # anger + annoyance: one Ekman label
                   "lol thanks\t1,15\ta2\n"              # amusement + gratitude -> happiness
                   "hmm ok\t7,27\ta3\n"                  # curiosity + neutral: two labels, dropped
                   "ok\t27\ta4\n")

    assert [(i.label, i.text) for i in load_goemotions(tsv)] == [
        ("anger", "so annoying and wrong"), ("happiness", "lol thanks"), ("neutral", "ok")]


def test_goemotions_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_goemotions(tmp_path / "train.tsv")
    tsv = tmp_path / "train.tsv"
    tsv.write_text("fine\t4\ta\nbroken\t4,9\tb\n")
    with pytest.raises(UserError, match=r"train.tsv line 2: bad label ids '4,9'"):
        load_goemotions(tsv)
    tsv.write_text("fine\t4\ta\nno id column\n")
    with pytest.raises(UserError, match=r"line 2: expected text<TAB>"):
        load_goemotions(tsv)
    tsv.write_text("fine\t4\ta\n")
    (tmp_path / "labels.txt").write_text("admiration\namusement\n")
    with pytest.raises(UserError, match="expected the Ekman grouping"):
        load_goemotions(tsv)


# --- IEMOCAP ------------------------------------------------------------------------------------

EMO_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def emo_turn(start: float, end: float, utt: str, code: str) -> str:
    return (f"[{start:.4f} - {end:.4f}]\t{utt}\t{code}\t[2.5000, 2.5000, 2.5000]\n"
            "C-E1:\tNeutral state;\t()\nC-E3:\tNeutral state;\t()\nC-F1:\tNeutral state;\t(curious)\n"
            "A-E3:\tval 3; act 2; dom  2;\t()\nA-F1:\tval 3; act 2; dom  1;\t()\n\n")


def build_iemocap(root: Path) -> None:
    dialogs = {
        (1, "Ses01F_impro01"): [("F000", "neu", "Excuse me."), ("M000", "exc", "Do you have your forms?"),
                                ("F001", "fru", "Yeah."), ("M001", "xxx", "Let me see them.")],
        (1, "Ses01F_script01_1"): [("F000", "ang", "What did he say?"), ("M003", "sad", "")],
        (2, "Ses02M_impro03"): [("M000", "hap", "I got in!"), ("F000", "sur", "Really?")],
    }
    for (session, dialog), turns in dialogs.items():
        base = root / f"Session{session}"
        labels_text, transcript = EMO_HEADER, ""
        for n, (suffix, code, text) in enumerate(turns):
            utt = f"{dialog}_{suffix}"
            write_wav(base / "sentences" / "wav" / dialog / f"{utt}.wav")
            labels_text += emo_turn(1.0 + 3 * n, 2.5 + 3 * n, utt, code)
            if text:
                transcript += f"{utt} [{1 + 3 * n:07.4f}-{2.5 + 3 * n:07.4f}]: {text}\n"
        transcript += "M: [LAUGHTER]\nF: [BREATHING]\n"
        transcript += f"{dialog}_MXX0 [020.0000-021.0000]: overlapping talk\n"
        emo = base / "dialog" / "EmoEvaluation"
        (emo / "Categorical").mkdir(parents=True, exist_ok=True)
        (emo / f"{dialog}.txt").write_text(labels_text)
        (emo / "Categorical" / f"{dialog}_e1_cat.txt").write_text(f"{dialog}_F000 :Neutral state; ()\n")
        (emo / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
        (base / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
        (base / "dialog" / "transcriptions" / f"{dialog}.txt").write_text(transcript)
        (base / "dialog" / "avi" / "DivX").mkdir(parents=True, exist_ok=True)


def test_iemocap_official_layout(tmp_path: Path) -> None:
    build_iemocap(tmp_path)

    items = load_iemocap(tmp_path, sessions=(1, 2))

    assert [(i.audio.name, i.label, i.speaker, i.text) for i in items] == [
        ("Ses01F_impro01_F000.wav", "neutral", "Ses01F", "Excuse me."),
        ("Ses01F_impro01_M000.wav", "happiness", "Ses01M", "Do you have your forms?"),
        ("Ses01F_script01_1_F000.wav", "anger", "Ses01F", "What did he say?"),
        ("Ses01F_script01_1_M003.wav", "sadness", "Ses01M", None),   # no transcript line: ASR
        ("Ses02M_impro03_M000.wav", "happiness", "Ses02M", "I got in!"),
    ]
    assert items[0].audio == tmp_path / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F000.wav"
    assert all(i.corpus == "iemocap" and i.video is None and i.start is None for i in items)
    assert [i.speaker for i in load_iemocap(tmp_path, sessions=[2])] == ["Ses02M"]


def test_iemocap_errors(tmp_path: Path) -> None:
    build_iemocap(tmp_path)
    with pytest.raises(UserError, match="Session3/dialog/EmoEvaluation has no label files"):
        load_iemocap(tmp_path)                     # default: all five sessions
    with pytest.raises(UserError, match="session 6 does not exist"):
        load_iemocap(tmp_path, sessions=[6])
    (tmp_path / "Session2" / "sentences" / "wav" / "Ses02M_impro03" / "Ses02M_impro03_M000.wav").unlink()
    with pytest.raises(UserError, match="Ses02M_impro03_M000.wav: not found"):
        load_iemocap(tmp_path, sessions=[2])


def test_iemocap_speaker() -> None:
    assert iemocap_speaker("Ses01F_impro01_M000") == "Ses01M"
    assert iemocap_speaker("Ses05M_script02_2_F014") == "Ses05F"


# --- manifests ----------------------------------------------------------------------------------

LABELS = list(labels.CANONICAL)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_manifest_loads_every_field(tmp_path: Path) -> None:
    write_wav(tmp_path / "clips" / "a.wav")
    (tmp_path / "clips" / "a.mp4").write_bytes(b"video")
    manifest = write_lines(tmp_path / "m.jsonl", [
        json.dumps({"audio": "clips/a.wav", "label": "anger", "speaker": "s1", "video": "clips/a.mp4",
                    "start": 0, "end": 1.5, "text": "  leave me alone ", "corpus": "mine"}),
        "",
        "   ",
        json.dumps({"text": "what a lovely day", "label": "happiness"}),
    ])

    a, b = load_manifest(manifest, LABELS)

    assert a == Item(label="anger", speaker="s1", audio=tmp_path / "clips" / "a.wav", text="leave me alone",
                     video=tmp_path / "clips" / "a.mp4", start=0.0, end=1.5, corpus="mine")
    assert b == Item(label="happiness", speaker="", text="what a lovely day")


@pytest.mark.parametrize("line, message", [
    ('{"text": "hi", "label": "anger"', "invalid JSON"),
    ('["text", "anger"]', "expected a JSON object, got list"),
    ('{"text": "hi"}', "missing 'label'"),
    ('{"text": "hi", "label": "happy"}', "unknown label 'happy' (expected one of neutral, happiness, sadness"),
    ('{"speaker": "s1", "label": "anger"}', "needs 'audio' or 'text'"),
    ('{"audio": "nope.wav", "label": "anger"}', "audio file not found: {tmp}/nope.wav"),
    ('{"audio": "ok.wav", "video": "sub/../gone.mp4", "label": "anger"}', "video file not found: {tmp}/gone.mp4"),
    ('{"text": "", "label": "anger"}', "'text' is empty"),
    ('{"text": " \\t ", "label": "anger"}', "'text' is empty"),
    ('{"text": "hi", "label": 3}', "'label' must be a string, got 3"),
    ('{"text": 5, "label": "anger"}', "'text' must be a string"),
    ('{"text": "hi", "label": "anger", "speaker": 7}', "'speaker' must be a string"),
    ('{"audio": 1, "label": "anger"}', "'audio' must be a file path string"),
    ('{"text": "hi", "lable": "anger"}', "unknown key 'lable' (did you mean 'label'?"),
    ('{"audio": "ok.wav", "label": "anger", "start": -1}', "'start' must be a number of seconds >= 0"),
    ('{"audio": "ok.wav", "label": "anger", "start": true}', "'start' must be a number"),
    ('{"audio": "ok.wav", "label": "anger", "start": 2, "end": 1}', "'end' (1.0) must be after 'start' (2.0)"),
    ('{"text": "hi", "label": "anger", "end": 1}', "'start'/'end' need 'audio'"),
    ('{"text": "hi", "label": "anger", "label": "fear"}', "key 'label' appears twice"),
])
def test_manifest_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    write_wav(tmp_path / "ok.wav")
    good = json.dumps({"audio": "ok.wav", "label": "neutral"})
    manifest = write_lines(tmp_path / "manifest.jsonl", [good, "", good, good, "", good, line, good])

    with pytest.raises(UserError) as info:
        load_manifest(manifest, LABELS)

    assert str(info.value).startswith(f"{manifest} line 7: ")
    assert message.format(tmp=tmp_path) in str(info.value)


def test_manifest_reports_first_error_and_count(tmp_path: Path) -> None:
    manifest = write_lines(tmp_path / "m.jsonl", ['{"text": "a", "label": "x"}', '{"text": "b", "label": "anger"}',
                                                  '{"text": "c"}', "not json"])
    with pytest.raises(UserError, match=r"m.jsonl line 1: unknown label 'x' .*\(and 2 more bad lines\)$"):
        load_manifest(manifest, LABELS)


def test_manifest_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="manifest .*missing.jsonl not found"):
        load_manifest(tmp_path / "missing.jsonl", LABELS)
    with pytest.raises(UserError, match="has no items"):
        load_manifest(write_lines(tmp_path / "empty.jsonl", ["", "  "]), LABELS)
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\xe9", "label": "anger"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_manifest(tmp_path / "latin1.jsonl", LABELS)


def test_manifest_label_set_is_the_callers(tmp_path: Path) -> None:
    manifest = write_lines(tmp_path / "m.jsonl", ['{"text": "meh", "label": "disgust"}'])
    expected = r"unknown label 'disgust' \(expected one of neutral, happiness, sadness, anger\)"
    with pytest.raises(UserError, match=expected):
        load_manifest(manifest, ["neutral", "happiness", "sadness", "anger"])


def test_write_manifest_round_trip(tmp_path: Path) -> None:
    a1 = tmp_path / "ravdess" / "Actor_01"
    items = [Item(label="anger", speaker="ravdess-01", audio=write_flac(a1 / "03-01-05-01-01-01-01.flac"),
                  corpus="ravdess"),
             Item(label="fear", speaker="ravdess-01", audio=write_wav(a1 / "x.wav"), video=write_wav(a1 / "x.mp4"),
                  text="run", start=0.25, end=1.0),
             Item(label="sadness", speaker="", text="so sad")]
    manifest = tmp_path / "manifests" / "ravdess.jsonl"

    write_manifest(manifest, items)

    first = json.loads(manifest.read_text().splitlines()[0])
    assert first == {"label": "anger", "speaker": "ravdess-01",
                     "audio": "../ravdess/Actor_01/03-01-05-01-01-01-01.flac", "corpus": "ravdess"}
    assert load_manifest(manifest, LABELS) == items
    assert not list(manifest.parent.glob("*.tmp"))


# --- speaker folds ------------------------------------------------------------------------------


def ravdess_like(actors: int = 20, clips: int = 3) -> list[Item]:
    return [Item(label="neutral", speaker=f"ravdess-{a:02d}", audio=Path(f"/x/{a}-{c}.wav"))
            for a in range(1, actors + 1) for c in range(clips)]


def test_folds_are_speaker_independent_and_cover_everything() -> None:
    items = ravdess_like() + [Item(label="anger", speaker=GOEMOTIONS_SPEAKER, text=f"t{i}") for i in range(5)]
    text_idx = set(range(60, 65))

    folds = speaker_folds(items, k=5, seed=3)

    assert len(folds) == 5
    seen_val: list[int] = []
    for train, val in folds:
        train_speakers = {items[i].speaker for i in train}
        val_speakers = {items[i].speaker for i in val}
        assert not train_speakers & val_speakers
        assert sorted(train + val) == list(range(len(items)))
        assert text_idx <= set(train) and not text_idx & set(val)
        assert len(val_speakers) == 4
        females = [s for s in val_speakers if int(s[-2:]) % 2 == 0]
        assert len(females) == 2                      # gender-balanced: 2 women + 2 men per fold
        seen_val += val
    assert sorted(seen_val) == sorted(set(range(len(items))) - text_idx)   # each speech item validated once


def test_folds_are_deterministic_per_seed() -> None:
    items = ravdess_like()
    assert speaker_folds(items, 5, seed=1) == speaker_folds(items, 5, seed=1)
    assert any(speaker_folds(items, 5, seed=1) != speaker_folds(items, 5, seed=s) for s in range(2, 6))


def test_folds_balance_uneven_speaker_counts() -> None:
    items = [Item(label="neutral", speaker=f"spk{s}", text="x") for s in range(7)]
    sizes = sorted(len({items[i].speaker for i in val}) for _, val in speaker_folds(items, 3))
    assert sizes == [2, 2, 3]


def test_folds_by_custom_group_give_leave_one_session_out() -> None:
    items = [Item(label="neutral", speaker=f"Ses0{s}{g}", text="x") for s in range(1, 6) for g in "FM"]
    folds = speaker_folds(items, 5, group_of=lambda it: it.speaker[:5])
    assert sorted({items[i].speaker[:5] for i in val}.pop() for _, val in folds) == [f"Ses0{s}" for s in range(1, 6)]
    assert all(len(val) == 2 for _, val in folds)


def test_folds_errors() -> None:
    with pytest.raises(UserError, match="cannot make 5 speaker-independent folds from 3 speakers"):
        speaker_folds(ravdess_like(actors=3), 5)
    with pytest.raises(UserError, match="cannot make 1"):
        speaker_folds(ravdess_like(), 1)
    with pytest.raises(UserError, match="2 items have no speaker id"):
        speaker_folds(ravdess_like() + [Item(label="anger", speaker="", text="a")] * 2, 5)


# -- TESS, EMOVO, DailyDialog, leave-one-corpus-out -----------------------------------------------


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")  # the loaders read names only; nothing is decoded


def test_tess_takes_the_speaker_from_the_folder(tmp_path):
    _touch(tmp_path / "OAF", "OAF_back_angry.flac", "OA_bite_neutral.flac", "OAF_dog_ps.flac", ".DS_Store")
    _touch(tmp_path / "YAF", "YAF_back_happy.flac", "YAF_road_sad.wav")
    items = data.load_tess(tmp_path)
    assert [(it.speaker, it.label) for it in items] == [
        ("tess-OAF", "anger"), ("tess-OAF", "surprise"), ("tess-OAF", "neutral"),
        ("tess-YAF", "happiness"), ("tess-YAF", "sadness")]
    assert {it.corpus for it in items} == {"tess"} and all(it.text is None for it in items)


def test_tess_unknown_emotion_is_skipped_with_its_file(tmp_path):
    _touch(tmp_path / "OAF", "OAF_back_angry.flac", "OAF_back_bored.flac")
    with pytest.raises(UserError, match=r"OAF_back_bored\.flac.*unknown TESS emotion 'bored'"):
        data.load_tess(tmp_path)
    log = SkipLog(strict=False, warn=lambda line: None)
    assert len(data.load_tess(tmp_path, log)) == 1 and len(log.skips) == 1


def test_emovo_labels_and_speakers(tmp_path):
    _touch(tmp_path / "f1", "gio-f1-b1.flac", "tri-f1-n3.flac")
    _touch(tmp_path / "m2", "sor-m2-l4.flac", "pau-m2-d1.flac", "rab-m2-b2.flac", "dis-m2-b1.flac", "neu-m2-b1.flac")
    items = data.load_emovo(tmp_path)
    assert {(it.speaker, it.label) for it in items} == {
        ("emovo-f1", "happiness"), ("emovo-f1", "sadness"), ("emovo-m2", "surprise"), ("emovo-m2", "fear"),
        ("emovo-m2", "anger"), ("emovo-m2", "disgust"), ("emovo-m2", "neutral")}


def _dailydialog(root: Path, split: str, dialogues: list[str], codes: list[str]) -> Path:
    folder = root / split
    folder.mkdir(parents=True)
    (folder / f"dialogues_{split}.txt").write_text("".join(d + "\n" for d in dialogues))
    (folder / f"dialogues_emotion_{split}.txt").write_text("".join(c + "\n" for c in codes))
    return root


def test_dailydialog_turns_with_their_context(tmp_path):
    root = _dailydialog(tmp_path, "test", ["Hi , Tom ! __eou__ What ? __eou__ I won the lottery ! __eou__",
                                           "Fine . __eou__"], ["0 6 4 ", "0"])
    items = data.load_dailydialog(root, "test")
    assert [(it.text, it.label, it.context) for it in items] == [
        ("Hi, Tom!", "neutral", ()), ("What?", "surprise", ("Hi, Tom!",)),
        ("I won the lottery!", "happiness", ("Hi, Tom!", "What?")), ("Fine.", "neutral", ())]
    assert items[0].speaker == items[2].speaker != items[3].speaker and items[0].corpus == "dailydialog"


def test_dailydialog_dialogue_with_more_turns_than_codes_is_skipped_whole(tmp_path):
    """The official train split's line 7852 has 12 turns and 11 codes: which code is whose cannot be known."""
    root = _dailydialog(tmp_path, "train", ["A . __eou__ B . __eou__", "C . __eou__ D . __eou__ E . __eou__"],
                        ["0 0", "0 4"])
    with pytest.raises(UserError, match=r"dialogues_train\.txt line 2: 3 turns but 2 emotion codes"):
        data.load_dailydialog(root, "train")
    log = SkipLog(strict=False, warn=lambda line: None)
    assert [it.text for it in data.load_dailydialog(root, "train", log)] == ["A.", "B."] and len(log.skips) == 1
    with pytest.raises(UserError, match="split 'dev' does not exist"):
        data.load_dailydialog(root, "dev")


def test_leave_one_corpus_out_never_shares_a_corpus():
    items = ([data.Item("anger", f"ravdess-{i:02d}", corpus="ravdess") for i in range(4)]
             + [data.Item("anger", "tess-OAF", corpus="tess")] * 3 + [data.Item("fear", "emovo-f1", corpus="emovo")] * 2)
    folds = data.corpus_folds(items)
    assert len(folds) == 3
    for train, val in folds:
        assert sorted(train + val) == list(range(len(items)))
        assert len({items[i].corpus for i in val}) == 1 and not {items[i].corpus for i in val} & {items[i].corpus for i in train}
    with pytest.raises(UserError, match="at least 2 named corpora"):
        data.corpus_folds(items[:4])
