"""Checkpoints carry everything needed to use them: weights, label set, input dims, encoder ids, config,
and the audio statistics of the training speakers that speaker normalization starts from.

A checkpoint is two files side by side: `NAME.safetensors` holds the weights (float16, no pickle,
so loading one runs no code from it) and `NAME.json` its settings. Older checkpoints, a single
torch zip `NAME.pt`, are still read (with `weights_only=True`); `convert` rewrites one in today's form.

A checkpoint trained on other encoders (another Whisper, another frame stride) would silently give
garbage, so loading checks the encoder identity and fails with a message that names both sides.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from fdrl import config as config_mod
from fdrl.errors import UserError
from fdrl.inputs import WHISPER_VARIANT_SETTINGS
from fdrl.model import FDRL
from fdrl.outputs import write_atomic
from fdrl.predict import WordsReader
from fdrl.speaker import SpeakerNorm, standardize

FORMAT = "fdrl-stream/2"          # the settings JSON beside the safetensors weights
READER = "words_reader."          # the words reader's tensors, stored beside the model's
LEGACY_FORMAT = "fdrl-stream/1"   # a torch zip holding both (`NAME.pt`)
SUFFIX = ".safetensors"


@dataclass
class Checkpoint:
    model: FDRL
    labels: list[str]
    dims: dict[str, int]
    encoders: dict[str, Any]          # whisper/text model ids, audio frame stride
    model_config: config_mod.Model
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    speaker_norm: SpeakerNorm | None = None  # None: the model reads raw audio frames (or no audio)
    temperature: float = 1.0          # logits are divided by it before the softmax (fdrl.calibration)
    words_reader: WordsReader | None = None  # labels words alone with FDRL (None: checkpoints trained without text)

    def prepare(self, samples: list) -> list:
        """Samples as the model expects them: audio standardized per speaker when it was trained so."""
        return standardize(samples, self.speaker_norm)


def settings_path(weights: Path) -> Path:
    """The settings file that goes with the weights file `weights`."""
    return Path(weights).with_suffix(".json")


def files(path: Path) -> list[Path]:
    """The files a checkpoint named `path` consists of (what a command reads, or writes, for it)."""
    path = Path(path)
    return [path] if path.suffix == ".pt" else [path, settings_path(path)]


def check_name(path: Path) -> None:
    """A UserError unless `path` names a checkpoint `save` can write: checked before training starts."""
    if Path(path).suffix != SUFFIX:
        raise UserError(f"checkpoint {path}: name it NAME{SUFFIX} (its settings are written beside it as NAME.json)")


def save(path: Path, model: FDRL, labels: list[str], dims: dict[str, int], encoders: dict[str, Any],
         model_config: config_mod.Model, metrics: dict[str, Any] | None = None,
         speaker_norm: SpeakerNorm | None = None, temperature: float = 1.0,
         words_reader: WordsReader | None = None) -> None:
    """Write the weights to `path` (NAME.safetensors) and the settings to NAME.json, each atomically: a
    full disk or a killed process leaves the previous file as it was and no partial one (an
    OutputError names the file and the reason)."""
    check_name(path)
    # float16 on disk keeps the shipped file small; loaded as float32. Copies: safetensors refuses shared storage.
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous().clone()
             for k, v in model.state_dict().items()}
    if words_reader is not None:  # float32: a handful of numbers, kept exact
        state |= {READER + "weight": torch.from_numpy(np.ascontiguousarray(words_reader.weight, np.float32)),
                  READER + "bias": torch.from_numpy(np.ascontiguousarray(words_reader.bias, np.float32))}
    settings = {
        "format": FORMAT,
        "labels": list(labels),
        "dims": dict(dims),
        "encoders": dict(encoders),
        "model_config": dataclasses.asdict(model_config),
        "metrics": metrics or {},
        "speaker_norm": speaker_norm.to_dict() if speaker_norm else None,
        "temperature": float(temperature),  # fitted on held-out folds by `fdrl train --cv` (1.0: uncalibrated)
    }
    # Both serialized first, so a failure there writes nothing; the weights go first, so settings are never
    # newer than the weights beside them (a write failing in between leaves the older settings).
    weights = safetensors.torch.save(state, metadata={"format": FORMAT})
    text = json.dumps(settings, indent=1, default=float) + "\n"
    write_atomic(path, weights)
    write_atomic(settings_path(path), text)


def convert(legacy: Path, out: Path) -> None:
    """Rewrite a `NAME.pt` checkpoint as `out` (NAME.safetensors + NAME.json), weights and settings unchanged."""
    ckpt = load(legacy)
    save(out, ckpt.model, ckpt.labels, ckpt.dims, ckpt.encoders, ckpt.model_config, ckpt.metrics, ckpt.speaker_norm,
         ckpt.temperature, ckpt.words_reader)


def _read(path: Path) -> dict[str, Any]:
    """The settings of NAME.safetensors (from NAME.json) with its weights under "state_dict"."""
    settings_file = settings_path(path)
    if not settings_file.is_file():
        raise UserError(f"checkpoint {path} has no settings file {settings_file} beside it "
                        f"(a checkpoint is both files: copy NAME.json with NAME{SUFFIX})")
    try:
        state = safetensors.torch.load(path.read_bytes())
    except (safetensors.SafetensorError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} is corrupted or not a checkpoint ({type(e).__name__}); re-train or re-download it") from None
    try:
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"checkpoint {path}: its settings {settings_file} are corrupted ({type(e).__name__}); "
                        f"re-train or re-download it") from None
    if not isinstance(settings, dict) or settings.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not an fdrl-stream checkpoint ({settings_file}: format {FORMAT} expected)")
    return {**settings, "state_dict": state}


def _read_legacy(path: Path) -> dict[str, Any]:
    """A `NAME.pt` torch zip, read without running any code from it."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise UserError(f"checkpoint {path} is corrupted or not a checkpoint ({type(e).__name__}); re-train or re-download it") from None
    if not isinstance(blob, dict) or blob.get("format") != LEGACY_FORMAT:
        raise UserError(f"checkpoint {path} is not an fdrl-stream checkpoint (format {LEGACY_FORMAT} expected)")
    return blob


def load(path: Path, expected_encoders: dict[str, Any] | None = None, device: str = "cpu") -> Checkpoint:
    """Load and validate a checkpoint; every failure is a UserError naming the file and the fix."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (train one with `fdrl train` or pass --checkpoint PATH)")
    blob = _read_legacy(path) if path.suffix == ".pt" else _read(path)
    encoders = blob.get("encoders")
    if not isinstance(encoders, dict):
        raise UserError(f"checkpoint {path} has no encoder settings (damaged or written by another tool); re-train it")
    for key, want in (expected_encoders or {}).items():
        have = encoders.get(key)
        if have != want:
            which = f" ({WHISPER_VARIANT_SETTINGS})" if key == "whisper" else ""
            raise UserError(f"checkpoint {path} was trained with {key}={have!r} but the config gives {want!r}: "
                            f"use the matching encoder settings{which} or re-train")
    try:
        model_config = config_mod.Model(**blob["model_config"])
        model = FDRL(model_config, blob["dims"], len(blob["labels"]))
        state = dict(blob["state_dict"])
        reader = {k[len(READER):]: state.pop(k).float().numpy() for k in list(state) if k.startswith(READER)}
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        words_reader = WordsReader(reader["weight"], reader["bias"]) if reader else None
        if words_reader is not None and words_reader.weight.shape != (len(blob["labels"]), blob["dims"]["text"]):
            raise ValueError(f"words reader of shape {words_reader.weight.shape}")
        norm = SpeakerNorm.from_dict(blob["speaker_norm"]) if blob.get("speaker_norm") else None
        temperature = float(blob.get("temperature", 1.0))  # checkpoints from before calibration: 1.0
        if not 0 < temperature < float("inf"):
            raise ValueError(f"temperature {temperature} is not a positive number")
    except (TypeError, KeyError, AttributeError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} does not match this version of the model ({(str(e).splitlines() or [type(e).__name__])[0]}); re-train it") from None
    if model_config.speaker_norm and "audio" in model.dims and norm is None:
        raise UserError(f"checkpoint {path} was trained with speaker normalization but carries no speaker statistics; re-train it")
    model.to(device).eval()
    return Checkpoint(model, blob["labels"], blob["dims"], encoders, model_config, blob.get("metrics", {}), path, norm,
                      temperature, words_reader)
