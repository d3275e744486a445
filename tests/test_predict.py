"""`fdrl predict` and `recognize_file` end to end: real models on the committed demo clips."""
from __future__ import annotations

import csv
import re
import shutil

import pytest

from fdrl import config
from fdrl.config import PROJECT_ROOT
from fdrl.errors import UserError
from stream import recognize_file
from stream.batch import find_media
from stream.cli import main
from stream.events import Utterance
from tests.conftest import MIN_RECALL, word_recall

CLIPS = PROJECT_ROOT / "demo" / "clips"
ANGER = CLIPS / "02-anger.wav"  # "Stop it right now. I am furious with you."


def test_recognize_file_returns_the_final_utterances():
    utterances = recognize_file(ANGER)
    assert utterances and all(isinstance(u, Utterance) and u.final for u in utterances)
    u = utterances[0]
    assert 0 <= u.start < u.end <= 3.0
    # The plumbing, not the model's opinion of one clip: the label is the top score of a distribution.
    assert u.best_guess == max(u.scores, key=u.scores.get) and abs(sum(u.scores.values()) - 1) < 0.01
    assert u.label in (u.best_guess, "uncertain")
    assert word_recall("Stop it right now. I am furious with you.", " ".join(x.text for x in utterances)) >= MIN_RECALL
    with pytest.raises(UserError, match="not found"):
        recognize_file(CLIPS / "missing.wav")


def test_a_folder_with_unreadable_files(tmp_path, capsys):
    """Good clips in nested folders are labelled in path order; the unreadable ones are reported, the
    exit status says so, and files that are not media are not picked up from a folder."""
    archive = tmp_path / "archive"
    (archive / "b").mkdir(parents=True)
    shutil.copy(CLIPS / "06-surprise.wav", archive / "b" / "2.wav")
    shutil.copy(ANGER, archive / "1.wav")
    (archive / "b" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    (archive / "empty.mp3").write_bytes(b"")
    (archive / "notes.txt").write_text("not audio")
    out = tmp_path / "labels.csv"
    assert main(["predict", str(archive), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "2 of 4 files could not be read" in err
    assert re.search(r"broken\.wav.*\(skipped\)", err) and re.search(r"empty\.mp3.*\(skipped\)", err)
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["file"] for r in rows] == [str(archive / "1.wav"), str(archive / "b" / "2.wav")]
    labels = config.load().labels
    for r in rows:  # the best label, or `uncertain` where its score is below the threshold
        best = max(labels.names, key=lambda n: float(r[n]))
        assert r["label"] == (best if float(r[best]) >= labels.uncertain_below else "uncertain")


def test_every_file_once_in_the_order_given(tmp_path):
    (tmp_path / "x").mkdir()
    a, b = tmp_path / "x" / "a.flac", tmp_path / "b.WAV"
    for f in (a, b):
        f.write_bytes(b"")
    assert find_media([b, tmp_path / "x", a, tmp_path]) == [b, a]


@pytest.mark.parametrize("args, needle", [
    (["clip.jsonl", "--out", "clip.jsonl"], "--out clip.jsonl is the input clip.jsonl"),
    (["clip.jsonl", "--out", "labels.xlsx"], "unknown format '.xlsx' (use .csv, .jsonl, .srt, .vtt)"),
    (["clip.jsonl", "clip2.wav", "--out", "subs.srt"], "subtitles are timed against one recording"),
    (["nowhere", "--out", "x.csv"], "nowhere not found"),
    (["empty", "--out", "x.csv"], "holds no audio or video files"),
    (["clip.jsonl", "--out", "x.csv", "--ray", "--ray-workers", "0"], "--ray-workers 0: give at least 1"),
    (["clip.jsonl", "--out", "x.csv", "--ray", "auto", "--ray-cpus", "0"], "--ray-cpus 0: give a positive number"),
])
def test_bad_jobs_are_refused_before_any_work(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ANGER, tmp_path / "clip.jsonl")  # a named file is read whatever its name
    shutil.copy(ANGER, tmp_path / "clip2.wav")
    (tmp_path / "empty").mkdir()
    assert main(["predict", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "clip.jsonl").read_bytes() == ANGER.read_bytes()


def test_strict_fails_the_job_on_an_unreadable_file_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wave file")
    out = tmp_path / "labels.jsonl"
    assert main(["predict", str(tmp_path / "broken.wav"), "--out", str(out), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"fdrl: error: {tmp_path / 'broken.wav'}: cannot read")
    assert "Traceback" not in err and "(skipped)" not in err
    assert not out.exists()
