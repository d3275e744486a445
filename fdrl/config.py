"""Typed configuration: `config.toml` holds every default, this module validates it.

One loader for the whole project. Unknown keys and wrong types are errors that name the key,
so a typo in `config.toml` or in a `--set` flag never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from fdrl.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config.toml"


@dataclass
class Labels:
    names: list[str]


@dataclass
class Paths:
    checkpoint: str
    face_weights: str
    cache_dir: str


@dataclass
class Encoders:
    whisper_model: str
    whisper_compute_type: str
    whisper_compute_type_cuda: str
    whisper_threads: int
    audio_frame_stride: int
    prosody: bool
    text_model: str
    text_max_tokens: int
    text_tuned: str


@dataclass
class Asr:
    language: str
    beam_size: int
    no_speech_threshold: float
    log_prob_threshold: float
    word_timestamps: bool


@dataclass
class Face:
    rate_hz: float
    min_face_px: int
    detect_width: int


@dataclass
class Model:
    d_model: int
    n_heads: int
    shared_layers: int
    private_layers: int
    dropout: float
    alignment: str
    fusion: str
    speaker_norm: bool
    speaker_prior_frames: float


@dataclass
class Loss:
    alpha: float
    beta: float
    gamma: float
    temperature: float


@dataclass
class Train:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    folds: int
    goemotions_per_epoch: int
    text_dropout: float


@dataclass
class Fusion:
    face_weight: float


@dataclass
class Runtime:
    device: str
    max_batch: int
    max_wait_ms: int


@dataclass
class Vad:
    aggressiveness: int
    frame_ms: int
    preroll_ms: int
    hangover_ms: int
    min_utterance_ms: int
    max_utterance_ms: int
    speech_ratio: float
    tail_ms: int


@dataclass
class Ui:
    refresh_hz: float


@dataclass
class Config:
    labels: Labels
    paths: Paths
    encoders: Encoders
    asr: Asr
    face: Face
    model: Model
    loss: Loss
    train: Train
    fusion: Fusion
    runtime: Runtime
    vad: Vad
    ui: Ui

    def resolve(self, path: str) -> Path:
        """A path from the config: `~` expanded, relative paths taken from the project root."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else PROJECT_ROOT / p

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    ("model", "alignment"): {"word", "soft", "none"},
    ("model", "fusion"): {"fdrl", "concat"},
    ("runtime", "device"): {"auto", "cpu", "cuda"},
    ("vad", "frame_ms"): {10, 20, 30},
    ("vad", "aggressiveness"): {0, 1, 2, 3},
}

# Numeric keys whose out-of-range values would otherwise fail deep inside a run (a division by
# zero, a CTranslate2 traceback, every utterance an error) or mislead silently (negative probabilities).
_POSITIVE = {("face", "rate_hz"), ("ui", "refresh_hz"), ("asr", "beam_size"), ("runtime", "max_batch"),
             ("encoders", "audio_frame_stride"), ("encoders", "text_max_tokens"), ("train", "epochs"),
             ("train", "batch_size")}
_NON_NEGATIVE = {("encoders", "whisper_threads"), ("runtime", "max_wait_ms"), ("face", "detect_width"),
                 ("model", "speaker_prior_frames")}
_FRACTION = {("fusion", "face_weight"), ("model", "dropout"), ("train", "text_dropout")}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the field's type; ints are accepted where floats are expected."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint == list[str]:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise UserError(f"config key '{key}' must be a list of strings, got {value!r}")
    if hint in (int, float, str, bool) and type(value) is hint:
        return value
    name = getattr(hint, "__name__", str(hint))
    raise UserError(f"config key '{key}' must be of type {name}, got {type(value).__name__} {value!r}")


def _check(dotted: str, value: Any, hint: Any) -> Any:
    value = _coerce(dotted, value, hint)
    section, key = dotted.split(".", 1)
    allowed = _CHOICES.get((section, key))
    if allowed is not None and value not in allowed:
        raise UserError(f"config key '{dotted}' must be one of {sorted(allowed)}, got {value!r}")
    if (section, key) in _POSITIVE and not value > 0:
        raise UserError(f"config key '{dotted}' must be > 0, got {value!r}")
    if (section, key) in _NON_NEGATIVE and not value >= 0:
        raise UserError(f"config key '{dotted}' must be >= 0, got {value!r}")
    if (section, key) in _FRACTION and not 0 <= value <= 1:
        raise UserError(f"config key '{dotted}' must be between 0 and 1, got {value!r}")
    return value


def _section_types() -> dict[str, type]:
    return {name: hint for name, hint in get_type_hints(Config).items()}


def merge(cfg: Config, data: dict[str, Any]) -> Config:
    """Return `cfg` with the values in `data` (nested dicts) applied, every key and type validated."""
    sections = _section_types()
    for section_name, values in data.items():
        if section_name not in sections:
            raise UserError(f"unknown config section '[{section_name}]' (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise UserError(f"config '{section_name}' must be a table like [{section_name}]")
        section = getattr(cfg, section_name)
        hints = get_type_hints(type(section))
        for key, value in values.items():
            if key not in hints:
                raise UserError(f"unknown config key '{section_name}.{key}' (known: {', '.join(hints)})")
            setattr(section, key, _check(f"{section_name}.{key}", value, hints[key]))
    return cfg


def _build(data: dict[str, Any], source: Path) -> Config:
    """Build a complete Config; the project's config.toml must name every key."""
    sections = _section_types()
    merge_check = {k: v for k, v in data.items() if k not in sections}
    if merge_check:
        raise UserError(f"unknown config section '[{next(iter(merge_check))}]' in {source} (known: {', '.join(sections)})")
    built = {}
    for name, cls in sections.items():
        values = data.get(name, {})
        hints = get_type_hints(cls)
        missing = [k for k in hints if k not in values]
        if missing:
            raise UserError(f"config key '{name}.{missing[0]}' is missing from {source} (restore it from the repository)")
        unknown = [k for k in values if k not in hints]
        if unknown:
            raise UserError(f"unknown config key '{name}.{unknown[0]}' in {source} (known: {', '.join(hints)})")
        built[name] = cls(**{k: _check(f"{name}.{k}", values[k], h) for k, h in hints.items()})
    return Config(**built)


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path} (pass --config PATH to an existing file)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a BOM (Windows editors) is not TOML
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"malformed config file {path}: {e} (fix the TOML syntax)") from None


def parse_override(text: str) -> dict[str, Any]:
    """Parse `section.key=value` (the value in TOML syntax; a bare word is taken as a string)."""
    dotted, sep, raw = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise UserError(f"--set expects section.key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return {section: {key: value}}


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """The project's `config.toml`, then the user's file `path` (any subset of keys), then `--set` overrides."""
    cfg = _build(_read_toml(DEFAULT_CONFIG), DEFAULT_CONFIG)
    if path is not None and Path(path).resolve() != DEFAULT_CONFIG:
        cfg = merge(cfg, _read_toml(Path(path)))
    for text in overrides or []:
        cfg = merge(cfg, parse_override(text))
    return cfg
