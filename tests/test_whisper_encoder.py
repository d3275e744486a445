"""The torch port of Whisper's encoder (fdrl/whisper_encoder.py) against CTranslate2 itself."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from tests.conftest import speak
from fdrl.errors import UserError
from fdrl.whisper import Whisper, frame_count
from fdrl.whisper_encoder import CT2Reader, WhisperEncoder


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    return speak("The quick brown fox jumps over the lazy dog.", tmp_path_factory.mktemp("enc") / "fox.wav")


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_the_port_reproduces_ctranslate2s_last_layer(speech: np.ndarray) -> None:
    whisper = Whisper(compute_type="float32", threads=1)  # the same weights, unquantized: exact up to rounding
    encoder = WhisperEncoder.from_ct2(whisper.path)
    window = whisper.windows(speech)[0]
    expected = whisper._encode([window])[0]
    with torch.no_grad():
        states = encoder(torch.from_numpy(window)[None])
    assert len(states) == 4 and all(s.shape == (1, 1500, 384) for s in states)
    assert _relative_error(states[-1][0].numpy(), expected) < 1e-4
    # The shipped int8 encoder differs by its quantization only: the speech frames point the same way.
    int8 = Whisper(threads=1)._encode([window])[0]
    n = frame_count(speech.size)
    got = states[-1][0, :n].numpy()
    cosine = (got * int8[:n]).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(int8[:n], axis=-1)
    assert cosine.mean() > 0.97


def test_upto_stops_early_and_a_short_input_needs_no_padding(speech: np.ndarray) -> None:
    whisper = Whisper(threads=1)
    encoder = WhisperEncoder.from_ct2(whisper.path)
    mel = torch.from_numpy(whisper.windows(speech)[0][:, :200])[None]
    with torch.no_grad():
        two = encoder(mel, upto=2)
        every = encoder(mel)
    assert len(two) == 2 and two[0].shape == (1, 100, 384)
    torch.testing.assert_close(two[1], every[1])
    with pytest.raises(ValueError, match="positions"):
        encoder(torch.zeros(1, 80, 3002))


def test_the_reader_refuses_a_format_it_does_not_know(tmp_path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(struct.pack("<I", 5))
    with pytest.raises(ValueError, match="version 5"):
        CT2Reader(path)


def test_whisper_gives_the_asked_layers_frames_and_decodes_the_ports_output(speech: np.ndarray) -> None:
    last, second = Whisper(threads=1), Whisper(threads=1, layer=2)
    assert second.model_id == last.model_id + ":layer2"
    with torch.no_grad():
        every = second.port(torch.from_numpy(second.windows(speech)[0])[None])
    (frames, transcript), = second.process([speech])
    n = frame_count(speech.size)
    assert frames.shape == (n, 384)
    np.testing.assert_allclose(frames, every[1][0, :n].numpy(), rtol=1e-4, atol=1e-4)
    assert _relative_error(frames, last.encode([speech])[0]) > 0.5  # not the last layer's states
    (shared, window), = second.encode_shared([speech])
    np.testing.assert_allclose(window, every[-1][0].numpy(), rtol=1e-4, atol=1e-4)  # the decoder reads the port's output
    assert second.transcribe(speech, encoder_output=window).text == transcript.text
    heard = set(transcript.text.lower().strip(".").split())
    assert len(heard & {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"}) >= 4, transcript.text
    np.testing.assert_allclose(second.encode([speech])[0], frames, rtol=1e-5, atol=1e-5)  # frames alone: no decoder
    np.testing.assert_allclose(shared, frames, rtol=1e-5, atol=1e-5)


def test_a_layer_the_encoder_lacks_is_refused_with_its_range() -> None:
    with pytest.raises(UserError, match=r"whisper_layer = 9.*1\.\.4"):
        Whisper(threads=1, layer=9)
