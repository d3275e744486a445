"""Checkpoints carry everything needed to use them: weights, label set, input dims, encoder ids, config,
and the audio statistics of the training speakers that speaker normalization starts from.

A checkpoint trained on other encoders (another Whisper, another frame stride) would silently give
garbage, so loading checks the encoder identity and fails with a message that names both sides.
"""
from __future__ import annotations

import dataclasses
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fdrl import config as config_mod
from fdrl.errors import UserError
from fdrl.model import FDRL
from fdrl.outputs import write_atomic
from fdrl.speaker import SpeakerNorm, standardize

FORMAT = "fdrl-stream/1"


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

    def prepare(self, samples: list) -> list:
        """Samples as the model expects them: audio standardized per speaker when it was trained so."""
        return standardize(samples, self.speaker_norm)


def save(path: Path, model: FDRL, labels: list[str], dims: dict[str, int], encoders: dict[str, Any],
         model_config: config_mod.Model, metrics: dict[str, Any] | None = None,
         speaker_norm: SpeakerNorm | None = None, temperature: float = 1.0) -> None:
    """Write the checkpoint atomically: a full disk or a killed process leaves the previous file as it
    was and no partial one (an OutputError names the file and the reason)."""
    state = {k: v.detach().cpu().half() if v.is_floating_point() else v.cpu() for k, v in model.state_dict().items()}
    blob = io.BytesIO()  # serialized first: a failed write is then our OSError, not one from inside torch's writer
    torch.save({
        "format": FORMAT,
        "state_dict": state,          # float16 on disk keeps the shipped file small; loaded as float32
        "labels": list(labels),
        "dims": dict(dims),
        "encoders": dict(encoders),
        "model_config": dataclasses.asdict(model_config),
        "metrics": metrics or {},
        "speaker_norm": speaker_norm.to_dict() if speaker_norm else None,
        "temperature": float(temperature),  # fitted on held-out folds by `fdrl train --cv` (1.0: uncalibrated)
    }, blob)
    write_atomic(path, blob.getvalue())


def load(path: Path, expected_encoders: dict[str, Any] | None = None, device: str = "cpu") -> Checkpoint:
    """Load and validate a checkpoint; every failure is a UserError naming the file and the fix."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (train one with `fdrl train` or pass --checkpoint PATH)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise UserError(f"checkpoint {path} is corrupted or not a checkpoint ({type(e).__name__}); re-train or re-download it") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} is not an fdrl-stream checkpoint (format {FORMAT} expected)")
    encoders = blob.get("encoders")
    if not isinstance(encoders, dict):
        raise UserError(f"checkpoint {path} has no encoder settings (damaged or written by another tool); re-train it")
    for key, want in (expected_encoders or {}).items():
        have = encoders.get(key)
        if have != want:
            raise UserError(f"checkpoint {path} was trained with {key}={have!r} but the config gives {want!r}: "
                            f"use the matching encoder settings or re-train")
    try:
        model_config = config_mod.Model(**blob["model_config"])
        model = FDRL(model_config, blob["dims"], len(blob["labels"]))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
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
                      temperature)
