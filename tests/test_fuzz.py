"""Property-based fuzzing of everything a user hands in: media files, manifests, config files.

The invariant is the project's rule for bad input: a result, or a clean one-line `UserError`;
never another exception, a hang, or a crash of the process (a segfault ends the test run, which
fails it). These runs take a few seconds; `scripts/fuzz.py` runs the same properties for longer.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from pathlib import Path

import av
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdrl import config
from fdrl.audio import decode_audio
from fdrl.data import load_manifest
from fdrl.errors import UserError
from fdrl.labels import CANONICAL
from fdrl.skips import SkipLog

# The suite runs a fixed (derandomized) set of examples, so CI is repeatable; scripts/fuzz.py sets
# FDRL_FUZZ_EXAMPLES for a longer, random run.
LONG_RUN = "FDRL_FUZZ_EXAMPLES" in os.environ
FAST = settings(max_examples=int(os.environ.get("FDRL_FUZZ_EXAMPLES", "40")), deadline=None, derandomize=not LONG_RUN,
                database=None, suppress_health_check=list(HealthCheck))


def outcome(fn) -> object:
    """`fn()`'s result, or its UserError (one line); any other exception propagates and fails the property."""
    try:
        return fn()
    except UserError as e:
        assert "\n" not in str(e), str(e)
        return e


def check_audio(path: Path) -> None:
    result = outcome(lambda: decode_audio(path))
    if not isinstance(result, UserError):
        assert result.dtype == np.float32 and result.ndim == 1 and result.size > 0
        assert np.isfinite(result).all()


# -- media -------------------------------------------------------------------------------------------

SAMPLE_FORMATS = {1: 1, 3: 4}  # WAVE format tags: PCM (integer widths 1-4), IEEE float (32-bit)


@st.composite
def wav_files(draw) -> bytes:
    """A RIFF/WAVE file with a random header (some fields absurd) and random or truncated data."""
    tag = draw(st.sampled_from([1, 3, 0, 2, 0xFFFE, 99]))
    channels = draw(st.integers(0, 40))
    rate = draw(st.sampled_from([0, 1, 8000, 11025, 16000, 22050, 44100, 48000, 96000, 192000, 2 ** 31 - 1]))
    width = draw(st.sampled_from([0, 1, 2, 3, 4, 8]))
    frames = draw(st.integers(0, 3000))
    block = max(channels * width, 1)
    payload = draw(st.sampled_from(["noise", "tone", "zeros"]))
    n = frames * block
    if payload == "noise":
        data = np.random.default_rng(frames).integers(0, 256, n, dtype=np.uint8).tobytes()
    elif payload == "tone" and tag == 3 and width == 4:
        data = (0.5 * np.sin(np.arange(frames * max(channels, 1)) / 5)).astype("<f4").tobytes()[:n]
    else:
        data = bytes(n)
    declared = draw(st.sampled_from([len(data), 0, len(data) + 1000, 2 ** 32 - 1]))
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block & 0xFFFFFFFF, block & 0xFFFF, 8 * width)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", declared) + data
    blob = b"RIFF" + struct.pack("<I", len(body)) + body
    cut = draw(st.one_of(st.none(), st.integers(0, len(blob))))
    return blob if cut is None else blob[:cut]


@FAST
@given(wav_files())
def test_any_wav_header_decodes_or_is_a_user_error(blob):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.wav"
        path.write_bytes(blob)
        check_audio(path)


def _encoded(codec: str, ext: str, rate: int, channels: int, seconds: float) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x.{ext}"
        layout = "mono" if channels == 1 else f"{channels} channels"
        with av.open(str(path), "w") as container:
            stream = container.add_stream(codec, rate=rate, layout=layout)
            x = (0.3 * np.sin(2 * np.pi * 330 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.repeat(x[:, None], channels, axis=1).reshape(1, -1), format="flt", layout=layout)
            frame.sample_rate = rate
            target = av.AudioResampler(format=stream.codec_context.codec.audio_formats[0].name, layout=layout, rate=rate)
            for f in [*target.resample(frame), *target.resample(None)]:
                for packet in stream.encode(f):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        return path.read_bytes()


_CLEAN = {(codec, rate, ch): None for codec in ("flac", "libopus") for rate in (8000, 16000, 48000) for ch in (1, 2, 8)}


@FAST
@given(st.sampled_from(sorted(_CLEAN)), st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=64)), max_size=4),
       st.one_of(st.none(), st.floats(0, 1)))
def test_damaged_flac_and_opus_decode_or_are_a_user_error(key, patches, cut):
    codec, rate, channels = key
    if rate == 8000 and codec == "libopus" and channels == 8:
        rate = 16000
    if _CLEAN[key] is None:
        _CLEAN[key] = _encoded(codec, "flac" if codec == "flac" else "ogg", rate, channels, 0.5)
    blob = bytearray(_CLEAN[key])
    for where, junk in patches:  # bytes overwritten anywhere, the header included
        at = int(where * (len(blob) - 1))
        blob[at:at + len(junk)] = junk
    if cut is not None:
        blob = blob[: int(cut * len(blob))]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("fuzz.flac" if codec == "flac" else "fuzz.ogg")
        path.write_bytes(bytes(blob))
        check_audio(path)


# -- manifests ---------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
FIELD_VALUES = {
    "label": st.sampled_from([*CANONICAL, "boredom", ""]) | JSON,
    "text": st.text(max_size=40) | JSON,
    "speaker": st.text(max_size=8) | JSON,
    "audio": st.sampled_from(["clip.wav", "missing.wav", "", ".", "/dev/zero", "sub"]) | JSON,
    "start": st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 10 ** 30) | JSON,
    "end": st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 10 ** 30) | JSON,
    "corpus": st.text(max_size=8) | JSON,
}
RECORDS = st.dictionaries(st.sampled_from([*FIELD_VALUES, "extra"]), JSON, max_size=6).flatmap(
    lambda base: st.fixed_dictionaries({k: v for k, v in FIELD_VALUES.items() if k in base or k in ("label", "text")}))
GOOD = st.fixed_dictionaries({"label": st.sampled_from(CANONICAL), "text": st.text(min_size=1, max_size=30)},
                             optional={"speaker": st.text(max_size=8), "audio": st.just("clip.wav"),
                                       "start": st.floats(0, 100), "context": st.lists(st.text(max_size=20), max_size=3)})
LINES = st.one_of(GOOD.map(lambda r: json.dumps(r).encode()), RECORDS.map(lambda r: json.dumps(r).encode()), JSON.map(lambda v: json.dumps(v).encode()),
                  st.binary(max_size=60), st.just(b""), st.just(b"\xef\xbb\xbf{}"), st.just(b'{"label": "anger", "text": "hi"'))


@FAST
@given(st.lists(LINES, max_size=8))
def test_any_manifest_loads_or_is_a_user_error(lines):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "clip.wav").write_bytes(b"RIFF")  # exists: loading checks paths, not content
        (folder / "sub").mkdir()
        manifest = folder / "m.jsonl"
        manifest.write_bytes(b"\n".join(lines))
        lenient = SkipLog(strict=False, warn=lambda line: None)
        items = outcome(lambda: load_manifest(manifest, list(CANONICAL), lenient))
        if not isinstance(items, UserError):
            assert all(it.label in CANONICAL and (it.audio is not None or it.text is not None) for it in items)
            assert len(items) + len(lenient) + lenient.summary().get("repeated", 0) <= max(len(lines), 1)
        outcome(lambda: load_manifest(manifest, list(CANONICAL)))  # strict: the first bad line is the error


# -- config files --------------------------------------------------------------------------------------

KEYS = [(s, k) for s, fields in config.load().to_dict().items() for k in fields]
TOML_VALUES = st.one_of(st.integers(-(2 ** 63), 2 ** 63 - 1).map(str), st.floats().map(lambda f: "nan" if math.isnan(f) else
                        ("inf" if f == math.inf else "-inf" if f == -math.inf else repr(f))),
                        st.booleans().map(lambda b: str(b).lower()), st.text(max_size=10).map(json.dumps),
                        st.just("[]"), st.just('["a", "b"]'), st.just("{x = 1}"), st.just("1979-05-27"))


@FAST
@given(st.lists(st.tuples(st.sampled_from(KEYS + [("nosuch", "key"), ("vad", "nosuch")]), TOML_VALUES), max_size=6),
       st.binary(max_size=20))
def test_any_config_file_loads_or_is_a_user_error(entries, junk):
    by_section: dict[str, list[str]] = {}
    for (section, key), value in entries:
        by_section.setdefault(section, []).append(f"{key} = {value}")
    text = "".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in by_section.items())
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.toml"
        for blob in (text.encode(), text.encode() + junk):
            path.write_bytes(blob)
            cfg = outcome(lambda: config.load(path))
            if not isinstance(cfg, UserError):
                for section in cfg.to_dict():
                    getattr(cfg, section).check()  # a loaded config passes its own rules
