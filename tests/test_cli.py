"""`fdrl` end to end: eval on a generated manifest with a tiny trained checkpoint, and every bad input."""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import stream.cli
from fdrl.config import PROJECT_ROOT
from fdrl.progress import setup_logging
from stream.cli import _config, build_parser, main
from tests.test_pipeline import THREE, speech_file
from tests.test_sources import DEVICES, FakeSounddevice


def run(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    extra = ["--set", f"paths.cache_dir='{cache}'"] if cache else []
    return subprocess.run([sys.executable, "-m", "stream.cli", *extra, *args], capture_output=True, text=True, timeout=300)


def test_eval_json_end_to_end(mini_corpus, tiny_checkpoint, tmp_path):
    png = tmp_path / "cm.png"
    r = run("eval", "--manifest", str(mini_corpus / "manifest.jsonl"), "--checkpoint", str(tiny_checkpoint),
            "--json", "--plot", str(png), cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result) == {"n", "war", "uar", "macro_f1", "per_class", "confusion", "labels", "skipped", "repeated"}
    assert result["skipped"] == result["repeated"] == 0
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
    manifest = str(bad_manifest(tmp_path, line))
    code = main(["eval", "--strict", "--manifest", manifest, "--checkpoint", str(tiny_checkpoint)])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    # Without --strict the line is reported and skipped, the other one scored, and the status says so.
    code = main(["--set", f"paths.cache_dir='{tmp_path}'", "eval", "--json", "--manifest", manifest,
                 "--checkpoint", str(tiny_checkpoint)])
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and result["n"] == 1 and result["skipped"] == 1
    assert needle in err and "Traceback" not in err and "fdrl: 1 lines skipped" in err


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


# -- the command line itself -----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_and_set_work_before_and_after_the_subcommand(tmp_path, where):
    toml = tmp_path / "c.toml"
    toml.write_text("[runtime]\nmax_batch = 3\n")
    flags = ["--config", str(toml), "--set", "runtime.max_wait_ms=7"]
    argv = [*flags, "replay", "x.wav"] if where == "before" else ["replay", "x.wav", *flags]
    cfg = _config(build_parser().parse_args(argv))
    assert (cfg.runtime.max_batch, cfg.runtime.max_wait_ms) == (3, 7)


def test_set_on_both_sides_adds_up_and_the_later_wins(capsys):
    args = build_parser().parse_args(["--set", "runtime.max_batch=2", "--set", "runtime.max_wait_ms=9",
                                      "replay", "x.wav", "--set", "runtime.max_batch=5"])
    cfg = _config(args)
    assert (cfg.runtime.max_batch, cfg.runtime.max_wait_ms) == (5, 9)
    # and main reads the flags given after the subcommand
    assert main(["eval", "--manifest", "m.jsonl", "--set", "model.no_such_key=1"]) == 2
    assert "model.no_such_key" in capsys.readouterr().err


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"fdrl {metadata.version('fdrl-stream')}"


def test_devices_shows_channels_and_rate(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSounddevice(DEVICES))
    assert main(["devices"]) == 0
    audio = [line for line in capsys.readouterr().out.splitlines() if line.startswith("audio")]
    assert [line.split(None, 2)[2] for line in audio] == ["USB mic  1 ch  48000 Hz  (default)",
                                                          "Webcam audio  2 ch  44100 Hz"]


@pytest.mark.parametrize("code, fix", [
    (errno.EACCES, "write to a folder you may write to"),
    (errno.ENOSPC, "free some disk space"),
    (errno.EISDIR, "pass a file name"),
    (errno.ENOENT, "a folder on the path is missing"),
    (errno.EROFS, "read-only"),
])
def test_os_errors_are_one_line_with_the_file_and_the_fix(monkeypatch, capsys, code, fix):
    def fail(args):
        raise OSError(code, os.strerror(code), "/data/out/events.jsonl")

    monkeypatch.setattr(stream.cli, "cmd_devices", fail)
    assert main(["devices"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fdrl: error: /data/out/events.jsonl: {os.strerror(code)} (")
    assert fix in err and len(err.strip().splitlines()) == 1


def test_log_file_keeps_the_long_jobs_log(tmp_path, tiny_checkpoint, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"text": t, "label": label}) + "\n"
                                for t, label in [("I am so happy today", "happiness"), ("stop it right now", "anger")]))
    log = tmp_path / "eval.log"
    try:
        assert main(["eval", "--manifest", str(manifest), "--checkpoint", str(tiny_checkpoint), "--json",
                     "--log-file", str(log), "--set", f"paths.cache_dir='{tmp_path / 'cache'}'"]) == 0
    finally:
        setup_logging()  # close the file; later tests log to stderr only
    out, err = capsys.readouterr()
    assert json.loads(out.splitlines()[-1])["n"] == 2  # stdout holds the result alone
    line = re.search(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO (fdrl[.\w]*): (.+ in \d+\.\d s)$", log.read_text(), re.M)
    assert line, log.read_text()
    assert line[2] in " ".join(err.split())  # the same line on stderr, through Rich


def test_unwritable_log_file_fails_before_the_work(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert main(["eval", "--manifest", "m.jsonl", "--log-file", str(tmp_path / "a-file" / "x.log")]) == 2
    err = capsys.readouterr().err
    assert "x.log" in err and "m.jsonl" not in err and len(err.strip().splitlines()) == 1


def test_closed_stdout_ends_quietly_like_other_unix_tools(tmp_path):
    """`fdrl replay talk.wav | head -1`: one line out, no traceback, status 141 (killed by SIGPIPE)."""
    speech = speech_file(tmp_path / "three.wav", THREE)
    pipeline = 'set -o pipefail; "$0" -m stream.cli replay "$1" | head -1'
    proc = subprocess.run(["bash", "-c", pipeline, sys.executable, str(speech.path)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert len(proc.stdout.splitlines()) == 1
    assert proc.stderr == "" and proc.returncode == 141, (proc.returncode, proc.stderr[-2000:])


def test_log_file_that_is_the_input_is_refused_and_the_input_kept(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"text": "hi there", "label": "neutral"}\n')
    before = manifest.read_bytes()
    assert main(["eval", "--manifest", str(manifest), "--log-file", str(manifest)]) == 2
    assert "--log-file" in capsys.readouterr().err and manifest.read_bytes() == before


def test_tune_text_never_writes_over_the_shipped_layers_by_default():
    """Without --out, the layers go beside the user's work, as `train`'s checkpoint does: the
    packaged file (inside site-packages for a wheel) is what the default checkpoint was trained on."""
    args = build_parser().parse_args(["tune-text", "--goemotions", "g"])
    assert args.out == Path("runs/minilm.safetensors")
