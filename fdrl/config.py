"""Typed configuration: `config.toml` holds every default, this module validates it.

One loader for the whole project. Unknown keys and wrong types are errors that name the key,
so a typo in `config.toml` or in a `--set` flag never silently falls back to a default.

The defaults (config.toml and the weights under models/) are the data package `fdrl.defaults`:
the checkout's root in a checkout, a folder inside the package once installed from a wheel
(pyproject.toml maps one onto the other), so both read the same files the same way. A user's
own settings come on top, from the platform's config folder and then `--config FILE`.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import importlib.util
import math
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import platformdirs

from fdrl.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the checkout (tests, benchmarks, scripts): not in a wheel
DEFAULTS_PACKAGE = "fdrl.defaults"


def default_file(name: str) -> Path:
    """A file of the defaults, e.g. "config.toml" or "models/fdrl-default.safetensors".

    Installed from a wheel, they are the data package `fdrl.defaults`; in a checkout (an editable
    install included: setuptools cannot map a package onto the checkout's root there) there is no
    such package and they are read in place. A path, not a resource stream: the weights go to
    libraries (CTranslate2, safetensors) that open files by name.
    """
    if importlib.util.find_spec(DEFAULTS_PACKAGE) is None:
        return PROJECT_ROOT / name
    resource = importlib.resources.files(DEFAULTS_PACKAGE).joinpath(name)
    if not isinstance(resource, Path):
        raise UserError(f"the packaged defaults are not plain files ({resource}): install fdrl-stream unzipped (pip install)")
    return resource


def user_config_file() -> Path:
    """The per-user settings, read after the defaults when the file exists: ~/.config/fdrl-stream/config.toml
    on Linux (or under $XDG_CONFIG_HOME), the platform's own config folder elsewhere."""
    return platformdirs.user_config_path("fdrl-stream") / "config.toml"


DEFAULT_CONFIG = default_file("config.toml")
DEFAULTS_ROOT = DEFAULT_CONFIG.parent  # relative paths in the config are taken from here


def span(lo: float, hi: float) -> Any:
    """A numeric field's allowed range, both ends included."""
    return field(metadata={"range": (lo, hi)})


def one_of(*values: Any) -> Any:
    """A field's allowed values."""
    return field(metadata={"choices": values})


class Section:
    """A `[section]` of config.toml. Its fields say each key's type and allowed values (`span`,
    `one_of`); `rules` adds what ties keys together. `check` is the one validation of every key,
    run when a config is loaded or changed and by whoever builds a section by hand."""

    def check(self) -> None:
        name = _SECTION_NAMES.get(type(self), type(self).__name__.lower())
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, _check_value(f"{name}.{f.name}", getattr(self, f.name), hints[f.name], f.metadata))
        for problem in self.rules():
            raise UserError(f"config: {problem}")

    def rules(self) -> list[str]:
        """Constraints between keys of this section, as messages (none by default)."""
        return []


@dataclass
class Labels(Section):
    names: list[str]
    uncertain_below: float = span(0.0, 1.0)      # calibrated top score below which a label is shown as "uncertain"

    def rules(self) -> list[str]:
        if len(self.names) < 2 or len(set(self.names)) != len(self.names):
            return [f"labels.names must list at least 2 distinct labels, got {self.names}"]
        return []


@dataclass
class Paths(Section):
    checkpoint: str
    face_weights: str
    cache_dir: str


@dataclass
class Encoders(Section):
    whisper_model: str
    whisper_compute_type: str
    whisper_compute_type_cuda: str
    whisper_threads: int = span(0, 256)          # 0 = one per core
    whisper_layer: int = span(0, 32)             # 0 = the last block's states after LayerNorm (CTranslate2's output)
    whisper_window_s: int = span(1, 30)          # an utterance's last window is padded to a multiple of this (30 = Whisper's fixed window)
    audio_frame_stride: int = span(1, 50)
    prosody: bool
    text_model: str
    text_max_tokens: int = span(8, 512)          # MiniLM's position table holds 512
    text_max_chars: int = span(100, 1_000_000)   # longer texts are refused at load (memory stays bounded)
    text_tuned: str
    text_context_turns: int = span(0, 16)        # previous turns of the same stream read with each turn (0 = none)


@dataclass
class Asr(Section):
    language: str
    beam_size: int = span(1, 16)
    no_speech_threshold: float = span(0.0, 1.0)
    log_prob_threshold: float = span(-100.0, 0.0)
    word_timestamps: bool
    gate_min_avg_logprob: float = span(-100.0, 0.0)  # words reach the text branch only above both (fdrl/asr_gate.py)
    gate_min_word_prob: float = span(0.0, 1.0)
    gate_min_voiced_s: float = span(0.0, 30.0)       # a wordless segment with less voice is noise, not a laugh


@dataclass
class Face(Section):
    rate_hz: float = span(0.1, 30.0)
    min_face_px: int = span(8, 4096)
    detect_width: int = span(0, 8192)            # 0 = full size


@dataclass
class Model(Section):
    d_model: int = span(8, 4096)
    n_heads: int = span(1, 64)
    shared_layers: int = span(0, 12)
    private_layers: int = span(0, 12)
    dropout: float = span(0.0, 0.95)
    alignment: str = one_of("word", "soft", "none")
    fusion: str = one_of("fdrl", "concat")       # how FDRL joins its modalities (late fusion with faces: [late_fusion])
    speaker_norm: bool
    speaker_prior_frames: float = span(0.0, 1e7)

    def rules(self) -> list[str]:
        if self.d_model % self.n_heads:
            return [f"model.d_model ({self.d_model}) must be a multiple of model.n_heads ({self.n_heads})"]
        return []


@dataclass
class Loss(Section):
    alpha: float = span(0.0, 100.0)
    beta: float = span(0.0, 100.0)
    gamma: float = span(0.0, 100.0)
    temperature: float = span(1e-3, 100.0)


@dataclass
class Train(Section):
    epochs: int = span(1, 10_000)
    batch_size: int = span(1, 4096)
    lr: float = span(1e-7, 1.0)
    weight_decay: float = span(0.0, 1.0)
    seed: int = span(0, 2 ** 32 - 1)
    folds: int = span(2, 100)
    goemotions_per_epoch: int = span(0, 1_000_000)
    text_dropout: float = span(0.0, 1.0)
    neutral_voice_words: float = span(0.0, 1.0)  # neutral speech samples trained with an emotional text's words and label
    balance_corpora: bool                        # each speech corpus contributes equally per epoch
    speaker_subsets: bool                        # normalize each clip by a random subset of its speaker's clips
    dialogue_neutral: float = span(0.0, 1.0)     # how likely a DailyDialog neutral turn is drawn, relative to other text
    augment_copies: int = span(0, 10)            # perturbed copies of each training clip (fdrl/augment.py)


@dataclass
class TuneText(Section):
    """`fdrl tune-text`: MiniLM's top layers tuned for emotion on text (fdrl/tune_text.py)."""

    layers: int = span(1, 6)                     # top layers tuned, of MiniLM's 6
    epochs: int = span(1, 100)
    batch_size: int = span(1, 4096)
    lr: float = span(1e-7, 1.0)
    weight_decay: float = span(0.0, 1.0)
    warmup: float = span(0.0, 1.0)
    dropout: float = span(0.0, 0.95)
    balanced: bool
    dialogue_neutral: float = span(0.0, 1.0)     # fraction of DailyDialog's neutral turns drawn each epoch
    seed: int = span(0, 2 ** 32 - 1)


@dataclass
class LateFusion(Section):
    face_weight: float = span(0.0, 1.0)          # p = (1 - w) * p_fdrl + w * p_face when a face is seen
    words_weight: float = span(0.0, 1.0)         # p = (1 - w) * p_fdrl + w * p_reader for words without a voice


@dataclass
class Runtime(Section):
    device: str = one_of("auto", "cpu", "cuda")
    max_batch: int = span(1, 1024)
    max_wait_ms: int = span(0, 10_000)
    cpu_bf16: bool                     # the FDRL head under bf16 autocast on the CPU (fdrl.predict.cpu_bf16)


@dataclass
class Vad(Section):
    """The VAD segmenter's options (fdrl.vad.Segmenter takes this section as it is)."""

    aggressiveness: int = one_of(0, 1, 2, 3)
    frame_ms: int = one_of(10, 20, 30)
    preroll_ms: int = span(0, 2000)
    hangover_ms: int = span(10, 10_000)
    min_utterance_ms: int = span(0, 10_000)
    max_utterance_ms: int = span(1000, 30_000)  # Whisper encodes at most a 30-s window
    speech_ratio: float = span(0.01, 1.0)
    tail_ms: int = span(0, 10_000)
    asr_tail_ms: int = span(0, 10_000)    # after the tail, heard by Whisper only; at most what the hangover leaves
    early_ms: int = span(0, 10_000)       # 0 = off; a value not below hangover_ms is off too

    def frames(self, ms: int) -> int:
        """A duration as the segmenter counts it: in whole frames, rounded up."""
        return math.ceil(ms / self.frame_ms)

    def crop(self) -> dict[str, object]:
        """The settings that decide what a segment holds (cache keys of cropped clips): all but
        `early_ms`, which only decides when the work on a segment starts, and `asr_tail_ms`, which
        only decides what Whisper hears after it (a transcript's key: `fdrl.inputs.decoding_id`)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("early_ms", "asr_tail_ms")}

    def rules(self) -> list[str]:
        problems = []
        if self.hangover_ms < self.frame_ms:
            problems.append(f"vad.hangover_ms ({self.hangover_ms}) must be at least vad.frame_ms ({self.frame_ms})")
        if self.max_utterance_ms <= max(self.min_utterance_ms, self.preroll_ms):
            problems.append(f"vad.max_utterance_ms ({self.max_utterance_ms}) must exceed vad.min_utterance_ms "
                            f"({self.min_utterance_ms}) and vad.preroll_ms ({self.preroll_ms})")
        if self.tail_ms > self.hangover_ms:
            problems.append(f"vad.tail_ms ({self.tail_ms}) cannot exceed vad.hangover_ms ({self.hangover_ms})")
        return problems


@dataclass
class Ui(Section):
    refresh_hz: float = span(0.5, 30.0)


@dataclass
class Serve(Section):
    """`fdrl serve`: the WebSocket server's address and the limits every connection is held to (stream/server/)."""

    host: str                                    # anything but loopback needs a token (--token or FDRL_TOKEN)
    port: int = span(0, 65535)                   # 0 = any free port (printed when listening)
    origins: list[str]                           # browser origins allowed besides the server's own page
    max_message_bytes: int = span(1024, 64 * 2 ** 20)
    max_connections: int = span(1, 100_000)
    max_audio_s: float = span(1.0, 1e7)          # audio one connection may send
    idle_timeout_s: float = span(0.1, 86_400.0)  # longest wait for the client's next message
    send_queue: int = span(1, 100_000)           # events waiting for a client before it counts as a slow reader
    send_timeout_s: float = span(0.1, 3600.0)    # longest a single send may wait for the client to read
    audio_queue: int = span(1, 10_000)           # audio messages received but not yet taken by the pipeline


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
    tune_text: TuneText
    late_fusion: LateFusion
    runtime: Runtime
    vad: Vad
    ui: Ui
    serve: Serve

    def resolve(self, path: str) -> Path:
        """A path from the config: `~` expanded, relative paths taken from the defaults' folder (the
        checkout's root in a checkout), where "models/..." names the shipped weights."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else DEFAULTS_ROOT / p

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTION_NAMES: dict[type, str] = {hint: name for name, hint in get_type_hints(Config).items()}


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


def _check_value(dotted: str, value: Any, hint: Any, metadata: Any) -> Any:
    value = _coerce(dotted, value, hint)
    allowed = metadata.get("choices")
    if allowed is not None and value not in allowed:
        raise UserError(f"config key '{dotted}' must be one of {list(allowed)}, got {value!r}")
    bounds = metadata.get("range")
    if bounds is not None and not (bounds[0] <= value <= bounds[1]):  # NaN fails too
        raise UserError(f"config key '{dotted}' must be between {bounds[0]:g} and {bounds[1]:g}, got {value!r}")
    return value


def _section_types() -> dict[str, type]:
    return {name: hint for hint, name in _SECTION_NAMES.items()}


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
            setattr(section, key, value)
        section.check()
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
        built[name] = cls(**values)
        built[name].check()
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
    """The packaged `config.toml`, then the per-user file (`user_config_file`, when there is one), then
    the file `path` (`--config`), then `--set` overrides; the files may hold any subset of keys.

    The overrides are applied together, so keys checked against each other (`Section.rules`)
    may be changed in any order.
    """
    cfg = _build(_read_toml(DEFAULT_CONFIG), DEFAULT_CONFIG)
    user = user_config_file()
    if user.is_file():
        cfg = merge(cfg, _read_toml(user))
    if path is not None and Path(path).resolve() != DEFAULT_CONFIG:
        cfg = merge(cfg, _read_toml(Path(path)))
    changes: dict[str, Any] = {}
    for text in overrides or []:
        for section, values in parse_override(text).items():
            existing = changes.setdefault(section, {})
            if isinstance(existing, dict) and isinstance(values, dict):
                existing.update(values)
            else:
                changes[section] = values
    return merge(cfg, changes) if changes else cfg
