"""Bad input, in one place: every kind of broken or unusual input a user can bring, and what must happen.

Two outcomes are allowed, never a third: bad input gives a `UserError` whose message is one line
naming the file or key and the fix (the CLI prints it and exits 2, no traceback); good but unusual
input gives a correct result. Every file is generated here (numpy, PyAV, espeak-ng); nothing is committed.

The corpus, with each case's expected outcome. Entry points: D decode_audio, S FileSource,
R Recognizer.run replay, E evaluate / load_manifest, K config.load, P checkpoint.load, C the `fdrl` CLI
(C* in a subprocess). "error" = one-line UserError naming the file or key (CLI: exit 2).
Rows marked [n] are tested elsewhere (list below); "fixed" = a bug this corpus found (the test guards it).

 case                                           via    expected outcome
 ---------------------------------------------  -----  ----------------------------------------------
 WAV cut in the middle of its data              D S    result: exactly the samples that are there
 WAV header cut short / format 99 / 0 channels  D S    error
 FLAC cut in half                               D S    error
 FLAC, 400 bytes overwritten mid-file           D S    result: full length (FLAC frames have CRCs)
 MP3 cut in half                                D S    result: the first half
 MP3 / MP4, 400 bytes overwritten mid-file      D S    error
 MP4 cut in half (no moov atom)                 D S    error
 float WAV with NaN or inf samples              D      error (fixed)
 zero-length .flac / .mp3 / .mp4                D S    error (S on .flac: fixed, yielded no samples)
 zero-length .wav, 0-sample WAV, random bytes   D      error [1]
 missing file, a folder, a text file            D S    error [2]
 8-bit unsigned WAV                             D      result: centred, right length
 8 / 22.05 / 44.1 / 48 kHz, stereo, 24-bit,     D R    result: 16 kHz mono, right length and level;
   float32, FLAC, MP3, MP4 (AAC) speech                  the spoken words at the right times [3]
 large DC offset (+0.5), clipping (x10)         D R E  result: the spoken words
 float samples far over full scale (peak 4.0)   D R    result: not clipped, the spoken words
 > 30 s of continuous speech                    R E    result: back-to-back utterances cover all of it
 video with audio and pictures                  R      result: words and face updates [4]
 audio without video                            R      result: words, no face updates, no waiting
 video without audio                            D S    error [5]
 video without audio                            C*     result: face labels, one warning, exit 0
 video without audio, --no-video                C      error [6]
 manifest "audio": undecodable / no audio track E      error
 manifest "video": an audio-only file           E      error
 manifest: empty or blank text, unknown label   E C    error with the line number [7]
 manifest: "text": null and no audio            E      error with the line number
 manifest: "audio" is a folder                  E      error with the line number
 manifest with a UTF-8 BOM and CRLF line ends   E      result: the items (fixed)
 manifest: not UTF-8, no items, missing         E      error [8]
 config: TOML syntax error, unknown key         K C    error [9]
 config: wrong type, bool for int, bad choice,  K      error (the ranges: fixed)
   out of range, not a table, unknown section,
   duplicate key, UTF-16, a folder, bad --set
 config: face.rate_hz = 0                       C*     error (fixed: was a ZeroDivisionError traceback)
 config: empty file, BOM + CRLF, int for float  K      result: the values
 checkpoint: missing, random bytes              C      error [10]
 checkpoint: other encoder settings             C      error naming the setting [11]
 checkpoint: empty, truncated, header flipped,  P      error (no encoders: fixed, was a KeyError)
   other weights, settings missing or not JSON,
   not ours, no encoders, fewer labels, other
   dims, unknown model option, no / damaged
   speaker statistics; an old NAME.pt: empty,
   not ours (a good one loads)
 checkpoint without encoder settings            C*     error (fixed)
 checkpoint with custom label names             E      result: scored (fixed: was a ValueError)
 corrupt MP3                                    R C*   error
 corrupt WAV, empty, truncated MP4, missing     C      error [6]
 FLAC cut / WAV format 99: the source fails     R      error (fixed: was swallowed, the run ended as
   before any segment is in flight                       if the file had ended, exit 0)
 float WAV with NaN samples                     R      error (fixed: NaN scores reached the events)
 replay a.wav --video b.wav (no pictures)       C      error
 output paths (29 cases, OUTPUT_CASES): an      C      error before any work, every file byte-identical,
   output that is an input (same name, symlink,          nothing written (fixed: the input was cut to a
   hard link, the checkpoint, the config, a              44-byte WAV, or became a PNG or a JSONL)
   replayed session), a non-empty --record
   folder, two outputs on one file, a folder,
   a device, a FIFO, an unwritable or too long
   path; in replay, eval, train and tune-text
 eval --plot NAME without .png                  C      result: exactly NAME (fixed: wrote NAME.png)
 manifest line: "end" 1e308 / 10**400, NaN,     E      skipped with its line number; error under
   -inf, text over 10 000 characters, a 1 MB             strict (fixed: OverflowError, RecursionError,
   line, JSON nested 100 000 deep, a 5000-digit          10 GB RSS, "file not found" for a FIFO)
   number, not UTF-8, NUL or 5000-character
   path, a FIFO or /dev/zero as audio, 10 000
   keys (14 cases)
 manifest: the same item on several lines       E      repeats dropped, each named with its line
 GoEmotions row: not UTF-8, a field over csv's  E      skipped with its line number; error under
   limit, text over the cap, 2 fields, bad ids           strict (fixed: UnicodeDecodeError traceback)
 eval: a 10 ms clip in the manifest             C      line skipped, the rest scored, exit 1; --strict:
                                                         error, exit 2 (fixed: IndexError lost the eval)

Tested elsewhere: [1] test_audio.py test_empty_file, test_wav_with_no_samples, test_garbage_bytes;
[2] test_audio.py test_missing_file, test_directory, test_sources.py test_file_errors_name_the_file;
[3] test_audio.py test_int16_wav_at_any_rate_becomes_16k, test_stereo_channels_are_averaged, test_24bit_wav,
test_other_codecs, test_mp3 (tones, decoding only); [4] test_session.py
test_cli_replay_of_a_video_file_uses_its_pictures; [5] test_audio.py test_video_without_audio, test_sources.py
test_video_without_audio; [6] test_session.py test_cli_replay_bad_input_is_one_line; [7] test_data.py
test_manifest_errors_name_file_and_line, test_cli.py test_eval_bad_manifest_lines; [8] test_data.py
test_manifest_file_errors; [9] test_cli.py test_bad_config_is_one_line; [10] test_cli.py
test_eval_missing_and_corrupt_checkpoint; [11] test_cli.py test_mismatched_checkpoint_names_the_encoder.
"""
from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import safetensors.torch
import torch

from fdrl import checkpoint, config
from fdrl.audio import SAMPLE_RATE, decode_audio, resample
from fdrl.calibration import UNCERTAIN
from fdrl.data import load_manifest
from fdrl.errors import UserError
from fdrl.evaluate import evaluate
from fdrl.labels import CANONICAL
from stream.cli import main
from stream.events import Event, FaceUpdate
from stream.pipeline import Recognizer
from stream.sources import FileSource
from tests.conftest import MIN_RECALL, speak, word_recall, words
from tests.test_audio import write_int_wav, write_with_av
from tests.test_pipeline import THREE, Speech, assert_accounting, final_stats, finals, make_config, speech_file
from tests.test_sources import collect

FDRL = Path(sys.executable).parent / "fdrl"
TWO = THREE[:2]  # "I am very happy to see you", "please open the window"


def run(coro, timeout: float = 120):
    """Run a coroutine; a hang fails the test instead of stalling the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def cases(argnames: str, rows: list) -> pytest.MarkDecorator:
    """`parametrize` with each row's first value (a file name, a key) as its readable test id."""
    return pytest.mark.parametrize(argnames, rows, ids=[str((r.values if hasattr(r, "values") else r)[0]) for r in rows])


def assert_user_error(fn, *needles: str) -> str:
    """`fn()` raises a UserError (nothing else) whose message is one line and contains every needle."""
    with pytest.raises(UserError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def source_audio(path: Path) -> np.ndarray:
    """Every sample a FileSource yields for `path` (audio only)."""
    chunks = run(collect(FileSource(path)), timeout=30)
    return np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)


def corrupt(data: bytes, seed: int = 0) -> bytes:
    """400 random bytes written over the middle of `data`."""
    mid = len(data) // 2
    return data[:mid] + np.random.default_rng(seed).bytes(400) + data[mid + 400:]


def speech_mp4(path: Path, audio: np.ndarray, fps: int = 10, with_audio: bool = True) -> Path:
    """A 64x48 grey MPEG-4 video as long as `audio` (16 kHz mono), with it as an AAC track unless told not to."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if with_audio else None
        for i in range(int(len(audio) / SAMPLE_RATE * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 90 + (i % 40), np.uint8), format="bgr24")
            frame.pts = i
            c.mux(v.encode(frame))
        c.mux(v.encode())
        if a is not None:
            for k in range(0, len(audio), 1024):
                frame = av.AudioFrame.from_ndarray(audio[None, k:k + 1024].astype(np.float32), format="flt", layout="mono")
                frame.sample_rate, frame.pts = SAMPLE_RATE, k
                c.mux(a.encode(frame))
            c.mux(a.encode())
    return path


def write_u8_wav(path: Path, audio: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(1)
        f.setframerate(rate)
        f.writeframes((np.round(audio * 127) + 128).astype(np.uint8).tobytes())
    return path


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


# More than 30 s of speech without a pause the VAD could split on: no punctuation, so espeak-ng never stops.
LONG_TEXT = ("the old man walked slowly along the river and watched the boats drift past the green hills "
             "while children played near the water and their mothers talked about the market and the weather "
             "and the price of bread and fish and the small dog ran after the birds that flew over the bridge "
             "then the sun went down behind the church and the lights came on in every window of the village "
             "and the farmer brought his cows home across the field and the baker closed his shop for the night "
             "and the teacher walked home with a pile of books under her arm and a smile on her face "
             "and the moon rose over the quiet town and the wind moved softly through the tall trees")


# -- fixtures: every file made once per module ------------------------------------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Speech:
    return speech_file(tmp_path_factory.mktemp("speech") / "two.wav", TWO, pause=1.0)


@pytest.fixture(scope="module")
def media(speech, tmp_path_factory) -> dict[str, Path]:
    """Every file of the corpus, good and bad, by name."""
    d = tmp_path_factory.mktemp("media")
    x = decode_audio(speech.path)                       # 16 kHz mono, peak about 0.5
    unit = x / np.abs(x).max()
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * 44100) / 44100)).astype(np.float32)
    y44 = resample(x, SAMPLE_RATE, 44100)
    files = {
        # good but unusual
        "8k-int16.wav": write_int_wav(d / "8k.wav", resample(x, SAMPLE_RATE, 8000), 8000),
        "22k-float32.wav": write_with_av(d / "22k-float.wav", resample(x, SAMPLE_RATE, 22050), 22050, "pcm_f32le"),
        "44k-stereo.wav": write_int_wav(d / "44k-stereo.wav", np.stack([y44, 0.5 * y44], axis=1), 44100),
        "48k-24bit.wav": write_int_wav(d / "48k-24bit.wav", resample(x, SAMPLE_RATE, 48000), 48000, width=3),
        "float-peak-4.wav": write_with_av(d / "loud-float.wav", 4.0 * unit, SAMPLE_RATE, "pcm_f32le"),
        "dc-offset.wav": write_int_wav(d / "dc.wav", 0.5 + 0.4 * unit, SAMPLE_RATE),
        "clipped.wav": write_int_wav(d / "clipped.wav", np.clip(10 * x, -1, 1), SAMPLE_RATE),
        "44k.flac": write_with_av(d / "speech.flac", y44, 44100, "flac"),
        "44k.mp3": write_with_av(d / "speech.mp3", y44, 44100, "libmp3lame"),
        "speech.mp4": speech_mp4(d / "speech.mp4", x),
        "u8.wav": write_u8_wav(d / "u8.wav", 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000), 8000),
        "silent.mp4": speech_mp4(d / "silent.mp4", np.zeros(SAMPLE_RATE, np.float32), with_audio=False),
    }
    speak(LONG_TEXT, d / "long.wav")
    files["long.wav"] = d / "long.wav"
    # broken: cut, overwritten, empty, wrong headers
    tone_wav = write_int_wav(d / "tone.wav", tone, 44100)
    tone_flac = write_with_av(d / "tone.flac", resample(tone, 44100, SAMPLE_RATE), SAMPLE_RATE, "flac")
    tone_mp3 = write_with_av(d / "tone.mp3", tone, 44100, "libmp3lame")
    av_mp4 = speech_mp4(d / "tone.mp4", resample(tone, 44100, SAMPLE_RATE))
    files["tone.wav"] = tone_wav
    wav = tone_wav.read_bytes()
    broken = {
        "wav-cut-in-data.wav": wav[: 44 + (len(wav) - 44) // 2],
        "wav-cut-in-header.wav": wav[:20],
        "wav-format-99.wav": patched(wav, 20, "<H", 99),
        "wav-0-channels.wav": patched(wav, 22, "<H", 0),
        "flac-cut.flac": tone_flac.read_bytes()[: tone_flac.stat().st_size // 2],
        "flac-overwritten.flac": corrupt(tone_flac.read_bytes()),
        "mp3-cut.mp3": tone_mp3.read_bytes()[: tone_mp3.stat().st_size // 2],
        "mp3-overwritten.mp3": corrupt(tone_mp3.read_bytes()),
        "mp4-cut.mp4": av_mp4.read_bytes()[: av_mp4.stat().st_size // 2],
        "mp4-overwritten.mp4": corrupt(av_mp4.read_bytes()),
        "empty.flac": b"",
        "empty.mp3": b"",
        "empty.mp4": b"",
    }
    for name, data in broken.items():
        (d / name).write_bytes(data)
        files[name] = d / name
    nan, inf = unit.copy(), unit.copy()
    nan[8000:8100] = np.nan
    inf[8000] = np.inf
    files["float-nan.wav"] = write_with_av(d / "float-nan.wav", nan, SAMPLE_RATE, "pcm_f32le")
    files["float-inf.wav"] = write_with_av(d / "float-inf.wav", inf, SAMPLE_RATE, "pcm_f32le")
    return files


REPLAYED = ["8k-int16.wav", "22k-float32.wav", "44k-stereo.wav", "48k-24bit.wav", "float-peak-4.wav", "dc-offset.wav",
            "clipped.wav", "44k.flac", "44k.mp3", "speech.mp4", "long.wav",
            "flac-cut.flac", "wav-format-99.wav", "mp3-overwritten.mp3", "float-nan.wav"]


@pytest.fixture(scope="module")
def replays(media, tiny_checkpoint, tmp_path_factory) -> dict[str, list[Event] | UserError]:
    """One recognizer (face analysis on), every file of REPLAYED through it at fast pace: its events, or its error."""
    cfg = make_config(tmp_path_factory.mktemp("cfg"))

    async def main() -> dict[str, list[Event] | UserError]:
        out: dict[str, list[Event] | UserError] = {}
        async with Recognizer(cfg, tiny_checkpoint) as rec:
            for name in REPLAYED:
                path = media[name]
                try:
                    out[name] = [e async for e in rec.run(FileSource(path, path))]
                except UserError as e:
                    out[name] = e
        return out

    return run(main(), timeout=240)


# -- broken media: a clear error, or the samples that are there ---------------------------------------


@cases("name, decode_error, source_error", [
    ("wav-cut-in-header.wav", "cannot decode", "cannot read"),
    ("wav-format-99.wav", "cannot decode", "corrupt"),
    ("wav-0-channels.wav", "cannot decode", "corrupt"),
    ("flac-cut.flac", "cannot decode", "corrupt or truncated"),
    ("mp3-overwritten.mp3", "cannot decode", "corrupt or truncated"),
    ("mp4-cut.mp4", "cannot decode", "cannot read"),
    ("mp4-overwritten.mp4", "cannot decode", "corrupt or truncated"),
    ("empty.flac", "contains no audio samples", "is corrupt, empty"),
    ("empty.mp3", "cannot decode", "cannot read"),
    ("empty.mp4", "cannot decode", "cannot read"),
])
def test_broken_media_is_a_one_line_error(media, name, decode_error, source_error):
    path = media[name]
    assert_user_error(lambda: decode_audio(path), str(path), decode_error)
    assert_user_error(lambda: source_audio(path), str(path), source_error)


@cases("name, seconds, slack", [
    ("wav-cut-in-data.wav", 1.0, 0.05),     # half of 2 s: WAV has no frame structure, the prefix is exact
    ("mp3-cut.mp3", 1.0, 0.05),             # MP3 frames are independent: the complete ones decode
    ("flac-overwritten.flac", 2.0, 0.26),   # FLAC frames carry CRCs: the damaged one (<= 4096 samples) is dropped or concealed
])
def test_damaged_media_that_still_decodes_gives_what_is_there(media, name, seconds, slack):
    audio = decode_audio(media[name])
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size / SAMPLE_RATE - seconds) < slack
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert source_audio(media[name]).size == audio.size  # the streaming decoder agrees
    if name.endswith(".wav"):  # the very samples of the intact file, up to the resampler's edge at the cut
        intact = decode_audio(media["tone.wav"])
        np.testing.assert_allclose(audio[:-100], intact[: audio.size - 100], atol=1e-4)


@pytest.mark.parametrize("name", ["float-nan.wav", "float-inf.wav"])
def test_non_finite_float_samples_are_an_error(media, name):
    assert_user_error(lambda: decode_audio(media[name]), str(media[name]), "NaN or infinite")


def test_8bit_unsigned_wav_is_centred(media):
    audio = decode_audio(media["u8.wav"])
    assert audio.size == SAMPLE_RATE and abs(float(audio.mean())) < 0.01
    assert np.abs(audio).max() == pytest.approx(0.5, abs=0.02)


# -- unusual formats of real speech: decoded right and recognized -----------------------------------

# name -> (decoded level relative to the 16 kHz original, its DC, words each utterance must contain)
FORMATS = {
    "8k-int16.wav": (1.0, 0.0, [{"happy"}, {"open", "window"}]),   # 4 kHz bandwidth: "see" loses its /s/
    "22k-float32.wav": (1.0, 0.0, None),
    "44k-stereo.wav": (0.75, 0.0, None),                          # channels averaged: (1 + 0.5) / 2
    "48k-24bit.wav": (1.0, 0.0, None),
    "float-peak-4.wav": (None, 0.0, None),                        # not clipped by decoding
    "dc-offset.wav": (None, 0.5, None),
    "clipped.wav": (None, 0.0, None),
    "44k.flac": (1.0, 0.0, None),
    "44k.mp3": (None, 0.0, None),                                 # encoder delay: not sample-aligned
    "speech.mp4": (None, 0.0, None),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_unusual_format_decodes_to_16k_mono(media, speech, name):
    level, dc, _ = FORMATS[name]
    x = decode_audio(speech.path)
    audio = decode_audio(media[name])
    assert audio.dtype == np.float32 and audio.ndim == 1
    slack = 0.1 if name.endswith((".mp3", ".mp4")) else 0.005   # MP3/AAC priming and padding
    assert abs(audio.size - x.size) <= slack * SAMPLE_RATE, (audio.size, x.size)
    assert float(audio.mean()) == pytest.approx(dc, abs=0.01)
    if level is not None:  # sample-aligned: the same signal at the expected level
        n = min(audio.size, x.size)
        a, b = audio[:n] - audio.mean(), x[:n]
        assert np.corrcoef(a, b)[0, 1] > (0.9 if name.startswith("8k") else 0.99)
        assert np.std(a) / np.std(b) == pytest.approx(level, rel=0.1 if name.startswith("8k") else 0.02)
    if name == "float-peak-4.wav":
        assert np.abs(audio).max() == pytest.approx(4.0, rel=1e-3)
    if name == "clipped.wav":
        assert np.mean(np.abs(audio) > 0.99) > 0.05  # really clipped: much of the speech sits at full scale


@pytest.mark.parametrize("name", list(FORMATS))
def test_unusual_format_replays_to_the_spoken_words(replays, speech, name):
    events = replays[name]
    assert not isinstance(events, UserError), events
    keys = FORMATS[name][2] or speech.keys
    final = finals(events)
    assert len(final) == 2, [u.text for u in final]
    for u, want, (voice_start, voice_end) in zip(final, keys, speech.spans):
        assert word_recall(want, u.text) >= MIN_RECALL, u.text
        assert abs(u.start - voice_start) <= 0.5 and abs(u.end - voice_end) <= 0.5, (u.start, u.end, voice_start, voice_end)
        assert u.best_guess in CANONICAL and u.label in (u.best_guess, UNCERTAIN)
        assert np.isfinite(list(u.scores.values())).all()
    stats = final_stats(events)
    assert (stats.segments_closed, stats.utterances, stats.errors) == (2, 2, 0)
    assert_accounting(stats)
    faces = [e for e in events if isinstance(e, FaceUpdate)]
    if name.endswith(".mp4"):  # audio and video: the pictures are analysed too (no face in flat grey)
        assert len(faces) >= 10 and all(f.label is None for f in faces)
    else:                      # audio without video: nothing to look at, nothing waited for
        assert faces == []


def test_over_30s_of_continuous_speech_is_covered_end_to_end(media, replays):
    audio = decode_audio(media["long.wav"])
    voiced = np.flatnonzero(np.abs(audio) > 0.01) / SAMPLE_RATE
    assert voiced[-1] - voiced[0] > 30 and np.diff(voiced).max() < 0.3  # continuous: no pause the VAD could use
    events = replays["long.wav"]
    assert not isinstance(events, UserError), events
    final = finals(events)
    stats = final_stats(events)
    assert stats.segments_closed == stats.utterances == len(final) >= 3  # 15 s at most each: split, nothing lost
    assert_accounting(stats)
    assert final[0].start <= voiced[0] + 0.1 and final[-1].end >= voiced[-1] - 0.1
    for a, b in zip(final, final[1:]):
        assert b.start - a.end <= 0.05, (a.end, b.start)     # back to back: no stretch of speech unlabelled
    for u in final:
        assert u.end - u.start <= 15.0 + 0.05
        assert len(words(u.text)) >= 1.5 * (u.end - u.start), u.text  # each piece transcribed, none dropped
    assert word_recall(LONG_TEXT, " ".join(u.text for u in final)) >= 0.75


# -- replay of sources that fail midway --------------------------------------------------------------


def test_replay_of_a_file_that_fails_while_a_segment_is_open_is_an_error(media, replays):
    """The tone opens a VAD segment before the damage: its inference is in flight when the source fails."""
    error = replays["mp3-overwritten.mp3"]
    assert isinstance(error, UserError) and "mp3-overwritten.mp3" in str(error)


@pytest.mark.parametrize("name", ["flac-cut.flac", "wav-format-99.wav"])
def test_replay_of_a_file_that_fails_before_any_segment_is_an_error(media, replays, name):
    error = replays[name]
    assert isinstance(error, UserError) and name in str(error), error


def test_replay_of_float_nan_samples_is_an_error(replays):
    error = replays["float-nan.wav"]
    assert isinstance(error, UserError) and "float-nan.wav" in str(error), error


# -- manifests ---------------------------------------------------------------------------------------


def write_manifest(path: Path, *records: dict | str) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("record, needle", [
    ({"text": None, "label": "anger"}, "needs 'audio' or 'text'"),   # null is absent: nothing left to classify
    ({"audio": "clips", "label": "anger"}, "clips is a folder, not a file"),
], ids=["null-text-no-audio", "audio-is-a-folder"])
def test_manifest_line_errors(tmp_path, record, needle):
    (tmp_path / "clips").mkdir()
    manifest = write_manifest(tmp_path / "m.jsonl", {"text": "fine", "label": "neutral"}, record)
    assert_user_error(lambda: load_manifest(manifest, CANONICAL), f"{manifest} line 2: ", needle)


def test_manifest_with_bom_and_crlf_loads(tmp_path):
    manifest = tmp_path / "notepad.jsonl"
    manifest.write_bytes('\ufeff{"text": "so happy", "label": "happiness"}\r\n{"text": "meh", "label": "neutral"}\r\n'
                         .encode("utf-8"))
    items = load_manifest(manifest, CANONICAL)
    assert [(i.text, i.label) for i in items] == [("so happy", "happiness"), ("meh", "neutral")]


@pytest.mark.parametrize("record, needle", [
    ({"audio": "wav-format-99.wav", "label": "anger"}, "cannot decode"),
    ({"audio": "silent.mp4", "label": "anger"}, "has no audio track"),
    ({"text": "hello", "video": "44k-stereo.wav", "label": "anger"}, "has no video track"),
], ids=["undecodable-audio", "video-without-audio-as-audio", "audio-only-file-as-video"])
def test_eval_names_the_bad_media_file(media, tiny_checkpoint, tmp_path, record, needle):
    record = {k: str(media[v]) if k in ("audio", "video") else v for k, v in record.items()}
    manifest = write_manifest(tmp_path / "m.jsonl", {"text": "fine words", "label": "neutral"}, record)
    cfg = make_config(tmp_path)
    bad = Path(record.get("video") or record["audio"]).name
    assert_user_error(lambda: evaluate(manifest, cfg, tiny_checkpoint), bad, needle)


def test_eval_scores_long_clipped_and_offset_speech(media, tiny_checkpoint, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", *({"audio": str(media[n]), "label": "neutral"}
                                                      for n in ("long.wav", "clipped.wav", "dc-offset.wav")))
    result = evaluate(manifest, make_config(tmp_path), tiny_checkpoint)
    assert result["n"] == 3 and sum(map(sum, result["confusion"])) == 3


# -- config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, needle", [
    ('[model]\nd_model = "big"\n', "'model.d_model' must be of type int, got str 'big'"),
    ("[vad]\nframe_ms = true\n", "'vad.frame_ms' must be of type int, got bool"),
    ('[model]\nalignment = "words"\n', "'model.alignment' must be one of ['word', 'soft', 'none'], got 'words'"),
    ("[face]\nrate_hz = 0\n", "'face.rate_hz' must be between 0.1 and 30, got 0.0"),
    ("[late_fusion]\nface_weight = 1.5\n", "'late_fusion.face_weight' must be between 0 and 1, got 1.5"),
    ("[encoders]\nwhisper_threads = -1\n", "'encoders.whisper_threads' must be between 0 and 256, got -1"),
    ("[encoders]\nwhisper_threads = 100000\n", "'encoders.whisper_threads' must be between 0 and 256, got 100000"),
    ("[runtime]\nmax_wait_ms = 100000000\n", "'runtime.max_wait_ms' must be between 0 and 10000, got 100000000"),
    ("[asr]\nbeam_size = 0\n", "'asr.beam_size' must be between 1 and 16, got 0"),
    ("[loss]\ntemperature = nan\n", "'loss.temperature' must be between 0.001 and 100, got nan"),
    ("[train]\nlr = inf\n", "'train.lr' must be between 1e-07 and 1, got inf"),
    ("[vad]\nmax_utterance_ms = 60000\n", "'vad.max_utterance_ms' must be between 1000 and 30000, got 60000"),
    ("[vad]\nhangover_ms = 20\n", "vad.hangover_ms (20) must be at least vad.frame_ms (30)"),
    ("[vad]\ntail_ms = 900\n", "vad.tail_ms (900) cannot exceed vad.hangover_ms (500)"),
    ("[model]\nd_model = 130\n", "model.d_model (130) must be a multiple of model.n_heads (4)"),
    ('[labels]\nnames = ["a", "a"]\n', "labels.names must list at least 2 distinct labels"),
    ("[fusion]\nface_weight = 0.5\n", "unknown config section '[fusion]'"),
    ("model = 3\n", "config 'model' must be a table like [model]"),
    ("[modle]\nd_model = 3\n", "unknown config section '[modle]'"),
    ("[vad]\nframe_ms = 30\nframe_ms = 20\n", "malformed config file"),
    (b"\xff\xfe[\x00v\x00a\x00d\x00]\x00", "malformed config file"),   # UTF-16 from a Windows editor
], ids=["wrong-type", "bool-for-int", "bad-choice", "rate-zero", "weight-over-one", "negative-threads",
        "huge-threads", "huge-wait", "beam-zero", "nan", "inf", "utterance-over-whisper-window",
        "hangover-under-frame", "tail-over-hangover", "heads-do-not-divide", "duplicate-labels",
        "old-section-name", "section-not-a-table", "unknown-section", "duplicate-key", "utf16"])
def test_bad_config_file(tmp_path, text, needle):
    path = tmp_path / "c.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    assert_user_error(lambda: config.load(path), needle)


def test_config_path_that_is_a_folder(tmp_path):
    assert_user_error(lambda: config.load(tmp_path), "config file not found", "--config PATH")


@cases("override, needle", [
    ("vad.frame_ms", "--set expects section.key=value"),
    ("frame_ms=20", "--set expects section.key=value"),
    ("vad.frame_ms=25", "'vad.frame_ms' must be one of [10, 20, 30], got 25"),
    ("runtime.max_batch=0", "'runtime.max_batch' must be between 1 and 1024, got 0"),
])
def test_bad_override(override, needle):
    assert_user_error(lambda: config.load(overrides=[override]), needle)


def test_unusual_but_valid_config_files(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert config.load(empty).to_dict() == config.load().to_dict()
    windows = tmp_path / "windows.toml"
    windows.write_bytes("\ufeff[vad]\r\nhangover_ms = 300\r\n[late_fusion]\r\nface_weight = 1\r\n".encode("utf-8"))
    cfg = config.load(windows)
    assert cfg.vad.hangover_ms == 300 and cfg.late_fusion.face_weight == 1.0 and isinstance(cfg.late_fusion.face_weight, float)


# -- checkpoints -------------------------------------------------------------------------------------


def damaged_checkpoints(good: Path, d: Path) -> dict[str, Path]:
    """Variants of a real checkpoint (NAME.safetensors and its NAME.json), each broken one way, and of
    the older single-file form (NAME.pt)."""
    weights = good.read_bytes()
    settings = json.loads(checkpoint.settings_path(good).read_text())
    out = {}

    def pair(name: str, content: bytes = weights, settings_text: str | None = None, **changes) -> None:
        path = d / f"{name}.safetensors"
        path.write_bytes(content)
        edited = {k: v for k, v in {**settings, **changes}.items() if v is not None}
        checkpoint.settings_path(path).write_text(json.dumps(edited) if settings_text is None else settings_text)
        out[name] = path

    pair("empty", b"")
    pair("truncated", weights[: len(weights) // 2])
    pair("header-bytes-flipped", weights[:8] + bytes(b ^ 0xFF for b in weights[8:1000]) + weights[1000:])
    pair("other-weights", safetensors.torch.save({"weights": torch.zeros(3)}))
    pair("settings-not-json", settings_text="{")
    pair("not-ours", format=None)
    pair("no-encoders", encoders=None)
    pair("encoders-not-a-table", encoders="bundled")
    pair("fewer-labels", labels=settings["labels"][:3])
    pair("other-dims", dims={**settings["dims"], "audio": 7})
    pair("unknown-model-option", model_config={**settings["model_config"], "experts": 8})
    pair("custom-labels", labels=[f"mood{k}" for k in range(len(settings["labels"]))])
    pair("no-speaker-stats", speaker_norm=None)
    pair("bad-speaker-stats", speaker_norm={"n": 3.0})
    (d / "no-settings.safetensors").write_bytes(weights)
    out["no-settings"] = d / "no-settings.safetensors"
    state = safetensors.torch.load(weights)
    torch.save({**settings, "format": checkpoint.LEGACY_FORMAT, "state_dict": state}, d / "legacy.pt")
    torch.save({"weights": torch.zeros(3)}, d / "legacy-not-ours.pt")
    (d / "legacy-empty.pt").write_bytes(b"")
    out.update({name: d / f"{name}.pt" for name in ("legacy", "legacy-not-ours", "legacy-empty")})
    return out


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    return damaged_checkpoints(tiny_checkpoint, tmp_path_factory.mktemp("ckpt"))


ENCODERS = {"audio_frame_stride": 2}


@cases("name, needle", [
    ("empty", "is corrupted or not a checkpoint (SafetensorError); re-train or re-download it"),
    ("truncated", "is corrupted or not a checkpoint"),
    ("header-bytes-flipped", "is corrupted or not a checkpoint"),
    ("other-weights", "does not match this version of the model"),
    ("settings-not-json", "are corrupted (JSONDecodeError); re-train or re-download it"),
    ("no-settings", "has no settings file"),
    ("not-ours", "is not an fdrl-stream checkpoint"),
    ("no-encoders", "has no encoder settings"),
    ("encoders-not-a-table", "has no encoder settings"),
    ("fewer-labels", "does not match this version of the model"),
    ("other-dims", "does not match this version of the model"),
    ("unknown-model-option", "does not match this version of the model"),
    ("no-speaker-stats", "was trained with speaker normalization but carries no speaker statistics; re-train it"),
    ("bad-speaker-stats", "does not match this version of the model ('mean'); re-train it"),
    ("legacy-empty", "is corrupted or not a checkpoint (EOFError); re-train or re-download it"),
    ("legacy-not-ours", "is not an fdrl-stream checkpoint"),
])
def test_damaged_checkpoint(checkpoints, name, needle):
    assert_user_error(lambda: checkpoint.load(checkpoints[name], ENCODERS), str(checkpoints[name]), needle)


def test_a_checkpoint_for_another_whisper_window_says_which_setting(tiny_checkpoint):
    from fdrl.inputs import encoder_ids
    other_window = encoder_ids(config.load(overrides=["encoders.whisper_window_s=20"]))["whisper"]
    assert_user_error(lambda: checkpoint.load(tiny_checkpoint, {"whisper": other_window}), str(tiny_checkpoint),
                      "':windowNs' encoders.whisper_window_s = N; without them 0 and 30")


def test_an_older_single_file_checkpoint_still_loads(checkpoints, tiny_checkpoint):
    old, new = checkpoint.load(checkpoints["legacy"], ENCODERS), checkpoint.load(tiny_checkpoint, ENCODERS)
    assert old.labels == new.labels and old.dims == new.dims
    assert all(torch.equal(a, b) for a, b in zip(old.model.state_dict().values(), new.model.state_dict().values()))


def test_checkpoint_with_custom_labels_is_scored(checkpoints, tmp_path):
    """A `labels.names` outside the canonical set: no face to fuse with, but eval must still score it."""
    manifest = write_manifest(tmp_path / "m.jsonl", {"text": "what a lovely day", "label": "mood1"},
                              {"text": "leave me alone", "label": "mood3"})
    result = evaluate(manifest, make_config(tmp_path), checkpoints["custom-labels"])
    assert result["n"] == 2 and result["labels"] == [f"mood{k}" for k in range(7)]


# -- the command line, end to end in a real process --------------------------------------------------


def fdrl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `fdrl` console script (`python -m stream.cli` where it is not installed)."""
    command = [str(FDRL)] if FDRL.is_file() else [sys.executable, "-m", "stream.cli"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=180, cwd=cwd, env=env)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fdrl: error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_replay_of_a_corrupt_mp3(media, tiny_checkpoint, tmp_path):
    r = fdrl("--set", f"paths.cache_dir='{tmp_path}'", "replay", str(media["mp3-overwritten.mp3"]), "--pace", "fast",
             "--checkpoint", str(tiny_checkpoint), cwd=tmp_path)
    assert_one_line_error(r, "mp3-overwritten.mp3", "corrupt or truncated")


def test_cli_zero_face_rate_is_one_line_not_a_traceback(media, tmp_path):
    r = fdrl("--set", "face.rate_hz=0", "replay", str(media["44k-stereo.wav"]), "--pace", "fast", cwd=tmp_path)
    assert_one_line_error(r, "face.rate_hz", "between 0.1 and 30")


def test_cli_eval_with_a_checkpoint_without_encoder_settings(checkpoints, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", {"text": "fine words", "label": "anger"})
    r = fdrl("eval", "--manifest", str(manifest), "--checkpoint", str(checkpoints["no-encoders"]), cwd=tmp_path)
    assert_one_line_error(r, "no-encoders.safetensors", "has no encoder settings")


def test_cli_replay_of_video_without_audio_shows_faces(media, tiny_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    r = fdrl("--set", f"paths.cache_dir='{tmp_path}'", "replay", str(media["silent.mp4"]), "--pace", "fast",
             "--checkpoint", str(tiny_checkpoint), "--jsonl", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stdout + r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("fdrl: ")] == [
        f"fdrl: warning: {media['silent.mp4']} has no audio track: only face labels will be shown"]
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(e["type"] == "face" for e in events) >= 5 and not any(e["type"] == "utterance" for e in events)


def test_cli_replay_with_an_audio_file_as_video(media, tiny_checkpoint, tmp_path, capsys):
    wav = str(media["44k-stereo.wav"])
    code = main(["--set", f"paths.cache_dir='{tmp_path}'", "replay", wav, "--video", str(media["48k-24bit.wav"]),
                 "--checkpoint", str(tiny_checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and "48k-24bit.wav" in err and "no video track" in err


# -- output paths: checked before any work, never an input (fdrl/outputs.py) ----------------------------
#
# Each case is the shell reproduction: `prep` runs in a fresh folder holding in.wav (and
# m.jsonl, g/train.tsv, model.safetensors + model.json, the tiny checkpoint), then `fdrl ARGS` runs there. The outcome is
# one error line naming the output and the fix, exit 2, every file that was there byte-identical,
# and no new file (a refused run creates nothing).

A_SESSION = "mkdir s && cp in.wav s/audio.wav && touch s/events.jsonl && echo '{\"format\": \"fdrl-session/1\"}' > s/session.json"
OUTPUT_CASES = [
    ("record-into-the-inputs-folder", "mkdir p && cp in.wav p/audio.wav", "replay p/audio.wav --record p",
     "--record p holds the input p/audio.wav"),
    ("record-into-a-foreign-folder", "mkdir f && echo notes > f/notes.txt", "replay in.wav --record f",
     "--record f is not empty (it holds notes.txt): pass a new or empty folder"),
    ("record-onto-a-file", "echo x > notes.txt", "replay in.wav --record notes.txt", "--record notes.txt is a file, not a folder"),
    ("record-into-a-session-folder", A_SESSION, "replay in.wav --record s", "--record s is not empty"),
    ("record-a-session-into-itself", A_SESSION, "replay s --record s", "--record s holds the input s"),
    ("jsonl-over-a-replayed-sessions-events", A_SESSION, "replay s --jsonl s/events.jsonl",
     "would overwrite a file inside an input folder"),
    ("plot-over-the-input", "", "replay in.wav --plot in.wav", "--plot in.wav is the input in.wav"),
    ("jsonl-over-the-input", "", "replay in.wav --jsonl in.wav", "--jsonl in.wav is the input in.wav"),
    ("jsonl-through-a-symlink-to-the-input", "ln -s in.wav link.jsonl", "replay in.wav --jsonl link.jsonl",
     "--jsonl link.jsonl is the input in.wav"),
    ("plot-onto-a-hard-link-of-the-input", "ln in.wav hard.png", "replay in.wav --plot hard.png",
     "--plot hard.png is the same file as the input in.wav"),
    ("jsonl-over-the-checkpoint", "", "replay in.wav --checkpoint model.safetensors --jsonl model.safetensors",
     "--jsonl model.safetensors is the input model.safetensors"),
    ("jsonl-over-the-checkpoint-settings", "", "replay in.wav --checkpoint model.safetensors --jsonl model.json",
     "--jsonl model.json is the input model.json"),
    ("jsonl-over-the-config", "printf '[vad]\\nhangover_ms = 300\\n' > c.toml", "--config c.toml replay in.wav --jsonl c.toml",
     "--jsonl c.toml is the input c.toml"),
    ("plot-and-jsonl-to-one-file", "", "replay in.wav --jsonl out.txt --plot out.txt", "would write the same file"),
    ("jsonl-inside-the-recording", "", "replay in.wav --record r --jsonl r/events.jsonl", "would write the same file"),
    ("plot-to-a-folder", "mkdir out", "replay in.wav --plot out", "--plot out is a folder: pass the path of a file"),
    ("plot-to-a-device", "", "replay in.wav --plot /dev/null", "--plot /dev/null is a device, not a regular file"),
    ("plot-to-a-fifo", "mkfifo f.png", "replay in.wav --plot f.png", "--plot f.png is a FIFO, not a regular file"),
    ("jsonl-under-a-file", "", "replay in.wav --jsonl in.wav/e.jsonl", "Not a directory (a part of the path is a file"),
    ("plot-name-too-long", "", "replay in.wav --plot " + "x" * 300 + ".png", "File name too long"),
    ("eval-plot-over-the-manifest", "", "eval --manifest m.jsonl --checkpoint model.safetensors --plot m.jsonl",
     "--plot m.jsonl is the input m.jsonl"),
    ("eval-plot-over-a-clip-of-the-manifest", "", "eval --manifest m.jsonl --checkpoint model.safetensors --plot in.wav",
     "--plot in.wav is the input"),
    ("eval-plot-over-the-checkpoint", "", "eval --manifest m.jsonl --checkpoint model.safetensors --plot model.json",
     "--plot model.json is the input model.json"),
    ("eval-plot-to-a-folder", "mkdir out", "eval --manifest m.jsonl --checkpoint model.safetensors --plot out",
     "--plot out is a folder"),  # not out.png beside it
    ("train-out-not-safetensors", "", "train --manifest m.jsonl --out model.pt",
     "checkpoint model.pt: name it NAME.safetensors (its settings are written beside it as NAME.json)"),
    ("train-out-to-dev-full", "ln -s /dev/full full.safetensors", "train --manifest m.jsonl --out full.safetensors",
     "--out full.safetensors is a device"),
    ("train-out-over-a-clip", "ln -s in.wav clip.safetensors", "train --manifest m.jsonl --out clip.safetensors",
     "--out clip.safetensors is the input /"),  # the clip as the manifest names it: an absolute path
    ("train-settings-over-the-manifest", "cp m.jsonl m.json", "train --manifest m.json --out m.safetensors",
     "--out settings m.json is the input m.json"),
    ("train-report-over-a-clip", "", "train --manifest m.jsonl --report in.wav", "--report in.wav is the input"),
    ("train-out-into-a-corpus-file", "touch g/x.safetensors", "train --goemotions g --out g/x.safetensors",
     "--out g/x.safetensors would overwrite a file inside an input folder"),
    ("train-out-and-report-to-one-file", "", "train --manifest m.jsonl --out run.safetensors --report run.json",
     "would write the same file"),
    ("tune-text-out-over-the-tsv", "", "tune-text --goemotions g --out g/train.tsv",
     "--out g/train.tsv would overwrite a file inside an input folder"),
]


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under `folder` (symlinks not followed), by relative path."""
    import hashlib
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture
def workdir(media, tiny_checkpoint, tmp_path, monkeypatch) -> Path:
    """A folder as a user's project: a clip, a manifest of it, a GoEmotions folder and a checkpoint."""
    import shutil
    shutil.copy(media["tone.wav"], tmp_path / "in.wav")
    shutil.copy(tiny_checkpoint, tmp_path / "model.safetensors")
    shutil.copy(checkpoint.settings_path(tiny_checkpoint), tmp_path / "model.json")
    write_manifest(tmp_path / "m.jsonl", {"audio": "in.wav", "label": "anger"}, {"text": "fine words", "label": "neutral"})
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "train.tsv").write_text("so happy\t3\tc1\nmeh\t4\tc2\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@cases("name, prep, args, needle", OUTPUT_CASES)
def test_an_output_that_would_destroy_an_input_or_cannot_be_written(workdir, capsys, name, prep, args, needle):
    import shlex
    if prep:
        subprocess.run(["bash", "-c", prep], cwd=workdir, check=True)
    before = file_hashes(workdir)
    code = main(["--set", f"paths.cache_dir='{workdir / 'cache'}'", *shlex.split(args)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fdrl: error: ") and needle in lines[0], err
    assert file_hashes(workdir) == before  # every input byte-identical, no file written


def test_eval_plot_to_a_name_without_suffix_writes_exactly_that_file(workdir, capsys):
    code = main(["--set", f"paths.cache_dir='{workdir / 'cache'}'", "eval", "--manifest", "m.jsonl",
                 "--checkpoint", "model.safetensors", "--json", "--plot", "confusion"])
    assert code == 0, capsys.readouterr().err
    assert (workdir / "confusion").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (workdir / "confusion.png").exists()


# -- manifest and corpus lines: reported with their line, skipped unless strict (fdrl/skips.py) -----------


def bad_line_cases() -> list:
    """(id, the bad manifest line as it is written, what its reason says)."""
    as_json = [
        ("end-1e308", {"audio": "in.wav", "label": "anger", "end": 1e308}, "'end' must be a number of seconds >= 0 and at most 86400"),
        ("end-10**400", {"audio": "in.wav", "label": "anger", "end": 10 ** 400}, "'end' must be a number of seconds"),
        ("start-nan", {"audio": "in.wav", "label": "anger", "start": float("nan")}, "'start' must be a number of seconds"),
        ("end-minus-infinity", {"audio": "in.wav", "label": "anger", "end": float("-inf")}, "'end' must be a number"),
        ("text-over-the-cap", {"text": "word " * 3000, "label": "anger"}, "'text' is 15000 characters long, over the limit of 10000"),
        ("path-with-nul", {"audio": "a\0b.wav", "label": "anger"}, "'audio' holds a NUL character"),
        ("path-too-long", {"audio": "x" * 5000, "label": "anger"}, "audio file not found"),
        ("audio-is-a-fifo", {"audio": "fifo.wav", "label": "anger"}, "fifo.wav is a FIFO, not a file"),
        ("audio-is-dev-zero", {"audio": "/dev/zero", "label": "anger"}, "audio /dev/zero is a device, not a file"),
        ("ten-thousand-keys", {f"k{i}": i for i in range(10_000)}, "unknown key 'k0'"),
    ]
    raw = [
        ("line-of-a-megabyte", '{"text": "' + "a" * 1_000_000 + '", "label": "anger"}', "the line is over"),
        ("nested-100k-deep", "[" * 100_000, "invalid JSON (nested too deeply)"),
        ("integer-of-5000-digits", '{"text": "a", "label": "anger", "end": ' + "1" * 5000 + "}", "Exceeds the limit"),
        ("not-utf8", b'{"text": "caf\xe9", "label": "anger"}', "not UTF-8 text"),
    ]
    return [(i, json.dumps(line), needle) for i, line, needle in as_json] + raw


@cases("name, line, needle", bad_line_cases())
def test_a_bad_manifest_line_is_skipped_with_its_number_or_fatal_when_strict(media, tmp_path, name, line, needle):
    from fdrl.skips import SkipLog
    import shutil
    shutil.copy(media["tone.wav"], tmp_path / "in.wav")
    os.mkfifo(tmp_path / "fifo.wav")
    manifest = tmp_path / "m.jsonl"
    good = json.dumps({"audio": "in.wav", "label": "anger"}).encode()
    manifest.write_bytes(good + b"\n" + (line if isinstance(line, bytes) else line.encode()) + b"\n"
                         + json.dumps({"text": "fine", "label": "neutral"}).encode() + b"\n")
    warned: list[str] = []
    skips = SkipLog(strict=False, warn=warned.append)
    items = load_manifest(manifest, CANONICAL, skips)
    assert [it.where for it in items] == [f"{manifest} line 1", f"{manifest} line 3"]
    assert len(skips) == 1 and len(warned) == 1 and warned[0].startswith(f"{manifest} line 2: ") and needle in warned[0]
    assert "\n" not in warned[0] and len(warned[0]) < 600
    assert_user_error(lambda: load_manifest(manifest, CANONICAL), f"{manifest} line 2: ", needle)


def test_repeated_manifest_lines_are_reported_and_dropped(media, tmp_path):
    from fdrl.skips import SkipLog
    import shutil
    (tmp_path / "clips").mkdir()
    shutil.copy(media["tone.wav"], tmp_path / "clips" / "a.wav")
    line = {"audio": "clips/a.wav", "label": "anger", "speaker": "s1"}
    manifest = write_manifest(tmp_path / "m.jsonl", line, line, {"text": "fine", "label": "neutral"},
                              {**line, "audio": "clips/../clips/a.wav"}, line)
    warned: list[str] = []
    skips = SkipLog(strict=True, warn=warned.append)  # repeats are not errors, even under --strict
    items = load_manifest(manifest, CANONICAL, skips)
    assert len(items) == 2 and skips.summary() == {"skipped": 0, "repeated": 3}
    assert [w.split(":")[0] for w in warned] == [f"{manifest} line {n}" for n in (2, 4, 5)]
    assert all("repeats line 1" in w for w in warned)


@cases("name, row, needle", [
    ("not-utf8", b"caf\xe9 au lait\t4\tc2\n", "not UTF-8 text"),
    ("field-over-the-csv-limit", b"x" * 200_000 + b"\t4\tc2\n", "not a TSV row (field larger than field limit"),
    ("text-over-the-cap", b"word " * 3000 + b"\t4\tc2\n", "over the limit of 10000"),
    ("two-fields", b"no id column\t4\n", "expected text<TAB>label ids<TAB>comment id, got 2 fields"),
    ("bad-ids", b"text\t4,99\tc2\n", "bad label ids '4,99'"),
])
def test_a_bad_goemotions_row_is_skipped_with_its_line_or_fatal_when_strict(tmp_path, name, row, needle):
    from fdrl.data import load_goemotions
    from fdrl.skips import SkipLog
    tsv = tmp_path / "train.tsv"
    tsv.write_bytes(b"so happy\t3\tc1\n" + row + b"meh\t4\tc3\n")
    warned: list[str] = []
    skips = SkipLog(strict=False, warn=warned.append)
    assert [it.text for it in load_goemotions(tsv, skips=skips)] == ["so happy", "meh"]
    assert len(warned) == 1 and warned[0].startswith(f"{tsv} line 2: ") and needle in warned[0], warned
    assert_user_error(lambda: load_goemotions(tsv), f"{tsv} line 2: ", needle)


def test_eval_skips_a_clip_too_short_to_encode_and_says_so(media, tiny_checkpoint, tmp_path, capsys):
    """A 10 ms clip used to end the whole eval with an IndexError from inside faster-whisper."""
    from fdrl.audio import write_wav
    write_wav(tmp_path / "short.wav", decode_audio(media["tone.wav"])[:160])
    manifest = write_manifest(tmp_path / "m.jsonl", {"text": "what a lovely day", "label": "happiness"},
                              {"audio": "short.wav", "label": "anger"}, {"text": "leave me alone", "label": "anger"})
    before = file_hashes(tmp_path)
    common = ["--set", f"paths.cache_dir='{tmp_path / 'cache'}'", "eval", "--manifest", str(manifest),
              "--checkpoint", str(tiny_checkpoint), "--json"]
    code = main(common)
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and result["n"] == 2 and result["skipped"] == 1
    assert f"{manifest} line 2: " in err and "too short to label" in err and "Traceback" not in err
    assert "fdrl: 1 lines skipped" in err
    code = main([*common, "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "too short to label" in err
    after = file_hashes(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("cache")} == before
