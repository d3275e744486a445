"""Shared fixtures: generated speech (espeak-ng), a tiny manifest and a tiny trained checkpoint.

Nothing here reads ../shared/data: every fixture is made on the spot.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Iterable

import numpy as np
import pytest

from fdrl.audio import decode_audio, write_wav

SENTENCES = [
    ("happiness", "I am so happy today, this is wonderful news."),
    ("anger", "Stop it right now, I am furious with you."),
    ("sadness", "I miss her so much and I feel empty."),
    ("neutral", "The meeting starts at ten in the second room."),
]


# Whisper's words on generated speech change with the build and with the batch an utterance shares
# ("my brother plays the guitar" once came out as "my grinder plays a guitar"), so tests compare
# transcripts by word recall against what was said, never by equality.
MIN_RECALL = 0.5


def load_script(name: str) -> ModuleType:
    """scripts/NAME.py as a module (the scripts are not a package), for tests of their pure parts."""
    from fdrl.config import PROJECT_ROOT
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def words(text: str) -> list[str]:
    """Lowercase words without punctuation, in order: transcripts are compared this way."""
    return re.findall(r"[a-z0-9']+", text.lower())


def word_recall(said: str | Iterable[str], heard: str) -> float:
    """The share of the words said (a sentence, or a set of its key words) that `heard` contains."""
    want = set(words(said)) if isinstance(said, str) else set(said)
    return len(want & set(words(heard))) / len(want) if want else 1.0


def speak(text: str, path: Path, voice: str = "en-us") -> np.ndarray:
    """Synthesize `text` with espeak-ng and return it as 16 kHz mono float32 (also written to `path`)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required for the speech fixtures: sudo apt-get install espeak-ng")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
    audio = decode_audio(raw)
    raw.unlink()
    write_wav(path, audio)
    return audio


@pytest.fixture(scope="session")
def mini_corpus(tmp_path_factory) -> Path:
    """A manifest of 8 spoken clips (2 voices x 4 sentences) and 8 text-only lines."""
    root = tmp_path_factory.mktemp("mini")
    lines = []
    for v, voice in enumerate(("en-us", "en-gb")):
        for k, (label, text) in enumerate(SENTENCES):
            name = f"{voice}-{k}.wav"
            speak(text, root / name, voice)
            lines.append({"audio": name, "label": label, "speaker": voice})
            lines.append({"text": text, "label": label, "speaker": f"text-{v}"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(mini_corpus, tmp_path_factory) -> Path:
    """A checkpoint trained for a few epochs on the mini corpus, with a private feature cache."""
    from fdrl import config
    from fdrl.train import Corpora, train_command
    cache = tmp_path_factory.mktemp("cache")
    cfg = config.load(overrides=[f"paths.cache_dir='{cache}'", "train.epochs=3", "train.batch_size=8"])
    out = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    train_command(cfg, Corpora(manifests=[mini_corpus / "manifest.jsonl"]), out)
    return out
