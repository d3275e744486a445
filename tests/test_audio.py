"""fdrl.audio: decoding real files of many kinds, PCM helpers, resampling. Fixtures are made here with PyAV."""
from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
import pytest

from fdrl.audio import SAMPLE_RATE, Resampler, ToMono16k, decode_audio, from_int16, resample, to_int16, to_mono, write_wav
from fdrl.errors import UserError


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(round(rate * seconds)) / rate)


def write_int_wav(path: Path, channels: np.ndarray, rate: int, width: int = 2) -> Path:
    """Integer PCM WAV with the stdlib; `channels` is [n] or [n, ch] float in [-1, 1]."""
    data = np.atleast_2d(channels.T).T
    scale = 2 ** (8 * width - 1) - 1
    ints = np.round(data * scale).astype(np.int32)
    raw = ints.astype("<i2").tobytes() if width == 2 else b"".join(
        v.to_bytes(3, "little", signed=True) for v in ints.reshape(-1).tolist())
    with wave.open(str(path), "wb") as f:
        f.setnchannels(data.shape[1])
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(raw)
    return path


def write_with_av(path: Path, audio: np.ndarray, rate: int, codec: str) -> Path:
    """Mono float audio encoded by FFmpeg through PyAV (float WAV, FLAC, MP3, Opus...)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="fltp", layout="mono")
        frame.rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def write_video(path: Path, with_audio: bool) -> Path:
    """A 1-s 64x48 MPEG-4 video, with or without an AAC track of a 440 Hz tone."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=44100, layout="mono") if with_audio else None
        for _ in range(10):
            image = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            for packet in video.encode(image):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if audio is not None:
            frame = av.AudioFrame.from_ndarray(sine(440, 44100, 1.0)[None].astype(np.float32), format="fltp", layout="mono")
            frame.rate = 44100
            for packet in [*audio.encode(frame), *audio.encode(None)]:
                container.mux(packet)
    return path


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / SAMPLE_RATE)[spectrum.argmax()])


def assert_tone(audio: np.ndarray, seconds: float, amplitude: float = 0.5, freq: float = 440) -> None:
    """16 kHz float32 mono, the right length (+-20 ms), frequency and level (edges skipped)."""
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - seconds * SAMPLE_RATE) <= 0.020 * SAMPLE_RATE
    middle = audio[1600:-1600]
    assert abs(peak_hz(middle) - freq) < 5
    assert rms(middle) == pytest.approx(amplitude / np.sqrt(2), rel=0.08)


# -- decoding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_int16_wav_at_any_rate_becomes_16k(tmp_path, rate):
    path = write_int_wav(tmp_path / f"tone{rate}.wav", sine(440, rate, 1.5), rate)
    assert_tone(decode_audio(path), 1.5)


def test_16k_wav_decodes_sample_exact(tmp_path):
    x = np.round(sine(440, 16000, 0.5) * 32767) / 32767
    decoded = decode_audio(write_int_wav(tmp_path / "exact.wav", x, 16000))
    np.testing.assert_allclose(decoded, x, atol=1.5 / 32768)


def test_stereo_channels_are_averaged(tmp_path):
    tone = sine(440, 48000, 1.0, amplitude=1.0)
    path = write_int_wav(tmp_path / "stereo.wav", np.stack([0.6 * tone, 0.2 * tone], axis=1), 48000)
    assert_tone(decode_audio(path), 1.0, amplitude=0.4)  # (0.6 + 0.2) / 2


def test_24bit_wav(tmp_path):
    assert_tone(decode_audio(write_int_wav(tmp_path / "s24.wav", sine(440, 44100, 1.0), 44100, width=3)), 1.0)


@pytest.mark.parametrize("name, codec, rate", [
    ("float.wav", "pcm_f32le", 44100),
    ("tone.flac", "flac", 22050),
    ("tone.ogg", "libopus", 48000),
])
def test_other_codecs(tmp_path, name, codec, rate):
    if codec not in av.codecs_available:
        pytest.skip(f"FFmpeg in this PyAV build has no {codec} encoder")
    assert_tone(decode_audio(write_with_av(tmp_path / name, sine(440, rate, 1.2), rate, codec)), 1.2)


def test_mp3(tmp_path):
    codec = "libmp3lame" if "libmp3lame" in av.codecs_available else "mp3"
    if codec not in av.codecs_available:
        pytest.skip("no MP3 encoder in this PyAV build")
    assert_tone(decode_audio(write_with_av(tmp_path / "tone.mp3", sine(440, 44100, 1.0), 44100, codec)), 1.0)


def test_audio_track_of_a_video(tmp_path):
    audio = decode_audio(write_video(tmp_path / "clip.mp4", with_audio=True))
    # AAC adds priming samples that this container does not trim: allow 100 ms.
    assert abs(audio.size - SAMPLE_RATE) < 0.1 * SAMPLE_RATE
    assert abs(peak_hz(audio[1600:-1600]) - 440) < 5


def test_start_end_cut_the_samples(tmp_path):
    path = write_int_wav(tmp_path / "ramp.wav", np.linspace(-0.9, 0.9, 32000), 16000)
    full = decode_audio(path)
    np.testing.assert_array_equal(decode_audio(path, start=0.25, end=0.75), full[4000:12000])
    np.testing.assert_array_equal(decode_audio(path, start=1.5), full[24000:])
    np.testing.assert_array_equal(decode_audio(path, end=0.1), full[:1600])
    np.testing.assert_array_equal(decode_audio(path, start=1.9, end=5.0), full[30400:])  # end past the file


def test_bad_start_end(tmp_path):
    path = write_int_wav(tmp_path / "short.wav", sine(440, 16000, 1.0), 16000)
    with pytest.raises(UserError, match="short.wav"):
        decode_audio(path, start=3.0)
    with pytest.raises(UserError, match="short.wav"):
        decode_audio(path, start=0.5, end=0.5)
    with pytest.raises(UserError, match="short.wav"):
        decode_audio(path, start=-1.0)


# -- errors name the file ------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"not found: .*nothing\.wav"):
        decode_audio(tmp_path / "nothing.wav")


def test_directory(tmp_path):
    with pytest.raises(UserError, match="is a folder, not a file"):
        decode_audio(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.wav"):
        decode_audio(tmp_path / "empty.wav")


def test_wav_with_no_samples(tmp_path):
    path = write_int_wav(tmp_path / "zero.wav", np.zeros(0), 16000)
    with pytest.raises(UserError, match=r"zero\.wav contains no audio samples"):
        decode_audio(path)


def test_garbage_bytes(tmp_path):
    (tmp_path / "noise.mp3").write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(UserError, match=r"cannot decode .*noise\.mp3"):
        decode_audio(tmp_path / "noise.mp3")


def test_video_without_audio(tmp_path):
    path = write_video(tmp_path / "silent.mp4", with_audio=False)
    with pytest.raises(UserError, match=r"silent\.mp4 has no audio track"):
        decode_audio(path)


# -- PCM helpers ---------------------------------------------------------------------------------

def test_int16_conversion_by_hand():
    pcm = to_int16(np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0, 1 / 32768]))
    assert np.frombuffer(pcm, "<i2").tolist() == [0, 16384, -16384, 32767, -32768, 32767, -32768, 1]
    np.testing.assert_array_equal(from_int16(pcm)[:3], [0.0, 0.5, -0.5])
    assert from_int16(pcm).dtype == np.float32


def test_int16_round_trip_is_within_one_step():
    x = np.random.default_rng(1).uniform(-1, 1, 1000).astype(np.float32)
    assert np.abs(from_int16(to_int16(x)) - x).max() <= 0.5 / 32768 + 1e-7


def test_write_wav_reads_back(tmp_path):
    x = sine(300, 16000, 0.5).astype(np.float32)
    write_wav(tmp_path / "out.wav", x)
    with wave.open(str(tmp_path / "out.wav")) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (1, 2, 16000, 8000)
    np.testing.assert_allclose(decode_audio(tmp_path / "out.wav"), x, atol=1 / 32768)


def test_to_mono():
    np.testing.assert_array_equal(to_mono(np.array([[1.0, 3.0], [2.0, 4.0], [-1.0, 1.0]])), [2.0, 3.0, 0.0])
    assert to_mono(np.array([[0.25]], np.float64)).dtype == np.float32
    np.testing.assert_array_equal(to_mono(np.array([0.1, 0.2], np.float32)), np.array([0.1, 0.2], np.float32))


# -- resampling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000])
def test_resample_matches_the_ideal_signal(rate):
    out = resample(sine(1000, rate, 1.0), rate)
    assert out.dtype == np.float32 and out.size == SAMPLE_RATE
    ideal = sine(1000, SAMPLE_RATE, 1.0)
    assert np.abs(out - ideal)[100:-100].max() < 1e-3  # away from the zero-padded edges


def test_resample_length_follows_the_ratio():
    assert resample(np.zeros(441), 44100).size == 160
    assert resample(np.zeros(442), 44100).size == 161   # 442 * 160 / 441 = 160.4, rounded up
    assert resample(np.zeros(3), 48000).size in (0, 1)  # a third of a sample: FFmpeg may round it away


@pytest.mark.parametrize("channels", [1, 2, 3, 6, 8, 9, 16, 32])
def test_any_channel_count_decodes_without_crashing(tmp_path, channels):
    """An 8-channel WAV used to end the process with a segfault (PyAV's copy of planar frames)."""
    x = sine(440, SAMPLE_RATE, 0.5)
    path = write_int_wav(tmp_path / f"c{channels}.wav", np.repeat(x[:, None], channels, axis=1), SAMPLE_RATE)
    np.testing.assert_allclose(decode_audio(path), x, atol=2e-3)


def test_planar_eight_channel_opus_decodes(tmp_path):
    """FFmpeg's Opus decoder gives planar float frames: eight planes is where PyAV's copy crashed."""
    x = sine(440, 48000, 0.5, amplitude=0.3).astype(np.float32)
    path, layout = tmp_path / "eight.ogg", "8 channels"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libopus", rate=48000, layout=layout)
        to_s16 = av.AudioResampler(format="s16", layout=layout, rate=48000)
        frame = av.AudioFrame.from_ndarray(np.repeat(x[:, None], 8, axis=1).reshape(1, -1), format="flt", layout=layout)
        frame.sample_rate = 48000
        for packet in [p for f in [*to_s16.resample(frame), *to_s16.resample(None)] for p in stream.encode(f)]:
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with av.open(str(path)) as container:
        assert next(container.decode(audio=0)).format.name == "fltp"  # planar, as the case needs
    out = decode_audio(path)
    assert abs(out.size - SAMPLE_RATE // 2) < 800 and 0.2 < np.abs(out).max() < 0.4


@pytest.mark.parametrize("channels,fmt", [(2, "fltp"), (6, "s16p"), (4, "s32p"), (3, "dblp"), (2, "u8p"),
                                          (8, "flt"), (12, "s16"), (32, "flt")])
def test_every_sample_format_converts(channels, fmt):
    """Planar and packed frames of any width, at 44.1 kHz, become the same 16 kHz mono."""
    x = sine(1000, 44100, 0.25, amplitude=0.25)
    planes = np.repeat(x[None], channels, axis=0)
    if fmt == "u8p":
        data = np.round(planes * 127 + 128).astype(np.uint8)
    else:
        scale = {"s16p": 2 ** 15 - 1, "s16": 2 ** 15 - 1, "s32p": 2 ** 31 - 1}.get(fmt, 1)
        dtype = {"s16p": np.int16, "s16": np.int16, "s32p": np.int32, "dblp": np.float64}.get(fmt, np.float32)
        data = (planes * scale).astype(dtype)
    if not fmt.endswith("p"):  # packed: one plane of interleaved samples
        data = data.T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=f"{channels} channels")
    frame.sample_rate = 44100
    convert = ToMono16k()
    out = np.concatenate([*convert.frame(frame), *convert.flush()])
    np.testing.assert_allclose(out[50:-50], resample(x, 44100)[50:-50], atol=1e-2)


def test_resample_removes_what_16k_cannot_hold():
    # A 12 kHz tone is above 16 kHz's Nyquist (8 kHz): it must vanish, not fold back to 4 kHz.
    assert rms(resample(sine(12000, 48000, 1.0), 48000)[100:-100]) < 1e-3 * rms(sine(12000, 48000, 1.0))


def test_resample_keeps_dc_and_same_rate_is_identity():
    np.testing.assert_allclose(resample(np.full(4800, 0.25), 48000)[50:-50], 0.25, atol=1e-6)
    x = np.random.default_rng(2).standard_normal(100).astype(np.float32)
    np.testing.assert_array_equal(resample(x, 16000), x)


def test_streaming_resampler_equals_one_shot():
    x = np.random.default_rng(3).standard_normal(44100).astype(np.float32)
    r = Resampler(44100)
    chunks = [r(x[i:i + 512]) for i in range(0, x.size, 512)]  # odd-sized chunks: 512 * 160 / 441
    streamed = np.concatenate([*chunks, r.flush()])
    np.testing.assert_allclose(streamed, resample(x, 44100), atol=1e-6)
