"""The package as a user gets it: a wheel installed into a fresh virtualenv, run from another folder,
with its defaults (config.toml, checkpoint, tuned text layers, face model) read from the package."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from fdrl import config
from fdrl.config import PROJECT_ROOT
from tests.conftest import speak


def checkout_files() -> list[str]:
    """The checkout's files as git sees them (tracked or new), without what .gitignore leaves out."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=PROJECT_ROOT,
                         capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name and (PROJECT_ROOT / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtualenv holding the wheel built from the checkout, and the current environment's
    dependencies through a .pth file (installing torch again would take minutes)."""
    root = tmp_path_factory.mktemp("package")
    src = root / "src"
    for name in checkout_files():  # a copy: the build's own folders stay out of the checkout
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes((PROJECT_ROOT / name).read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(root / "dist")],
                   check=True, capture_output=True)
    [wheel] = (root / "dist").glob("fdrl_stream-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    return venv


def user_env(tmp_path: Path) -> dict[str, str]:
    """A user's environment: no PYTHONPATH into the checkout, a config folder of their own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def test_the_installed_wheel_runs_from_any_folder_on_its_packaged_defaults(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    speak("Stop it right now, I am furious with you.", work / "gen.wav")
    probe = ("import fdrl, sys; from fdrl import config; cfg = config.load(); "
             "print(fdrl.__file__); print(config.DEFAULT_CONFIG); print(cfg.resolve(cfg.paths.checkpoint)); "
             "print(cfg.resolve(cfg.paths.face_weights)); print(cfg.resolve(cfg.encoders.text_tuned))")
    lines = subprocess.run([str(installed / "bin" / "python"), "-c", probe], cwd=work, env=user_env(tmp_path),
                           capture_output=True, text=True, check=True).stdout.split()
    package = Path(lines[0]).parent
    assert package.is_relative_to(installed) and not package.is_relative_to(PROJECT_ROOT)
    assert [Path(p) for p in lines[1:]] == [package / "defaults" / name for name in (
        "config.toml", "models/fdrl-default.safetensors", "models/face-minixception.pt", "models/minilm-dialogue.safetensors")]
    missing = [name for name in checkout_files() if name.endswith(".py") and name.split("/")[0] in ("fdrl", "stream")
               and not (package.parent / name).is_file()]
    assert missing == [], "not in the wheel: list their packages in pyproject.toml [tool.setuptools] packages"
    r = subprocess.run([str(installed / "bin" / "fdrl"), "predict", "gen.wav", "--out", "labels.csv"], cwd=work,
                       env=user_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    [row] = list(csv.DictReader((work / "labels.csv").open(newline="")))
    assert row["file"] == "gen.wav" and row["label"] in config.load().labels.names and float(row["confidence"]) > 0


def test_settings_come_from_defaults_then_user_file_then_config_then_set(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config.user_config_file() == tmp_path / "xdg" / "fdrl-stream" / "config.toml"
    default = config.load()
    config.user_config_file().parent.mkdir(parents=True)
    config.user_config_file().write_text("[vad]\nhangover_ms = 300\npreroll_ms = 200\n[ui]\nrefresh_hz = 4\n")
    given = tmp_path / "job.toml"
    given.write_text("[vad]\npreroll_ms = 100\nhangover_ms = 250\n")
    cfg = config.load(given, ["vad.hangover_ms=200"])
    assert (cfg.vad.hangover_ms, cfg.vad.preroll_ms, cfg.ui.refresh_hz) == (200, 100, 4.0)
    assert cfg.vad.min_utterance_ms == default.vad.min_utterance_ms
    config.user_config_file().write_text("[vad]\nhangover = 1\n")
    with pytest.raises(config.UserError, match=r"unknown config key 'vad.hangover'"):
        config.load()
