"""`fdrl` end to end: eval on a generated manifest with a tiny trained checkpoint, and every bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream.cli import main


def run(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    extra = ["--set", f"paths.cache_dir='{cache}'"] if cache else []
    return subprocess.run([sys.executable, "-m", "stream.cli", *extra, *args], capture_output=True, text=True, timeout=300)


def test_eval_json_end_to_end(mini_corpus, tiny_checkpoint, tmp_path):
    png = tmp_path / "cm.png"
    r = run("eval", "--manifest", str(mini_corpus / "manifest.jsonl"), "--checkpoint", str(tiny_checkpoint),
            "--json", "--plot", str(png), cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result) == {"n", "war", "uar", "macro_f1", "per_class", "confusion", "labels"}
    assert result["n"] == 16
    assert 0.0 <= result["war"] <= 1.0 and 0.0 <= result["uar"] <= 1.0
    assert sum(map(sum, result["confusion"])) == 16
    support = {k: v["support"] for k, v in result["per_class"].items()}
    assert support == {"neutral": 4, "happiness": 4, "sadness": 4, "anger": 4, "fear": 0, "disgust": 0, "surprise": 0}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def bad_manifest(tmp_path: Path, line: dict) -> Path:
    (tmp_path / "ok.wav").write_bytes(b"")
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"text": "fine words", "label": "anger"}) + "\n" + json.dumps(line) + "\n")
    return path


@pytest.mark.parametrize("line, needle", [
    ({"audio": "missing.wav", "label": "anger"}, "line 2"),
    ({"text": "hello", "label": "happy"}, "line 2"),
    ({"text": "   ", "label": "anger"}, "line 2"),
])
def test_eval_bad_manifest_lines(tmp_path, tiny_checkpoint, capsys, line, needle):
    code = main(["eval", "--manifest", str(bad_manifest(tmp_path, line)), "--checkpoint", str(tiny_checkpoint)])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_eval_missing_and_corrupt_checkpoint(tmp_path, mini_corpus, capsys):
    manifest = str(mini_corpus / "manifest.jsonl")
    assert main(["eval", "--manifest", manifest, "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert main(["eval", "--manifest", manifest, "--checkpoint", str(bad)]) == 2
    assert "corrupted" in capsys.readouterr().err


def test_mismatched_checkpoint_names_the_encoder(tmp_path, mini_corpus, tiny_checkpoint, capsys):
    code = main(["--set", "encoders.audio_frame_stride=3", "eval", "--manifest", str(mini_corpus / "manifest.jsonl"),
                 "--checkpoint", str(tiny_checkpoint)])
    assert code == 2
    assert "audio_frame_stride" in capsys.readouterr().err


def test_bad_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nd_modle = 3\n")
    assert main(["--config", str(cfg), "eval", "--manifest", "m.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "model.d_modle" in err and len(err.strip().splitlines()) == 1
    cfg.write_text("[model\n")
    assert main(["--config", str(cfg), "eval", "--manifest", "m.jsonl"]) == 2
    assert "malformed" in capsys.readouterr().err


def test_replay_missing_file(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "nothing.wav")]) == 2
    assert "nothing.wav" in capsys.readouterr().err
