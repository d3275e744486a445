"""The model's input, made one way: what training, `fdrl eval` and the live engine feed FDRL.

Every step from encoder outputs to a `Sample` lives here once: the Whisper frames kept (every
`stride`-th), the prosody rows appended on the same grid, the precision they are kept at, the
tie of each word's tokens to its audio frames, and the face features and posterior of an
utterance. `fdrl.features` (offline, cached) and `stream.inference` (live) both call these, so a
clip gives the model the same numbers whichever way it comes in.

Features are kept at float16: the cache stores them so, the checkpoint is trained on them, and
the live path rounds the same way instead of feeding the model numbers it never saw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fdrl.audio import WHISPER_WINDOW_S
from fdrl.config import Config
from fdrl.prosody import PROSODY_ID, join, prosody

WHISPER_FPS = 50          # Whisper encoder frames per second (20 ms hop)
FEATURE_DTYPE = np.float16


@dataclass
class Sample:
    """One encoded utterance: the model's input. Absent modalities are None."""

    label: int                              # index into the label set; -1 when unknown
    speaker: str
    audio: np.ndarray | None = None         # [T_a, 384 (+6)] Whisper encoder frames (every stride-th), prosody appended
    text: np.ndarray | None = None          # [T_t, 384] MiniLM token states, [CLS] ... [SEP]
    vision: np.ndarray | None = None        # [T_v, FACE_DIM] per-frame face features
    word_spans: np.ndarray | None = None    # [W, 4] int32 (audio_start, audio_end, token_start, token_end)
    transcript: str = ""
    face_posterior: np.ndarray | None = None  # [C] mean face posterior over the utterance (late fusion)
    corpus: str = ""                        # which corpus it came from: training balances corpora per epoch


@dataclass(frozen=True)
class Recipe:
    """How encoder outputs become model input, as set by `[encoders]`."""

    stride: int            # keep every stride-th Whisper frame
    prosody: bool          # append pitch, voicing and energy to each kept frame
    context_turns: int = 0  # previous turns of the conversation MiniLM reads with each turn

    @classmethod
    def from_config(cls, cfg: Config) -> Recipe:
        return cls(cfg.encoders.audio_frame_stride, cfg.encoders.prosody, cfg.encoders.text_context_turns)

    def context(self, history: Sequence[str]) -> tuple[str, ...]:
        """The context a turn is encoded with, from the turns before it (`context_window`)."""
        return context_window(history, self.context_turns)

    def whisper_frames(self, encoder_frames: np.ndarray) -> np.ndarray:
        """The Whisper part of the audio input: every stride-th encoder state."""
        return encoder_frames[:: self.stride].astype(FEATURE_DTYPE)

    def prosody_frames(self, speech: np.ndarray) -> np.ndarray:
        """The prosody part, on the kept frames' grid (computed from the same 16 kHz speech)."""
        return prosody(speech)[:: self.stride].astype(FEATURE_DTYPE)

    def audio(self, whisper_part: np.ndarray, prosody_part: np.ndarray | None) -> np.ndarray:
        """The audio input: Whisper frames, with the prosody rows appended when `prosody` is on."""
        if not self.prosody:
            return whisper_part
        if prosody_part is None:
            raise ValueError("encoders.prosody is on: the audio input needs its prosody rows")
        return join(whisper_part, prosody_part)

    def audio_input(self, encoder_frames: np.ndarray, speech: np.ndarray) -> np.ndarray:
        """Both parts at once, for a caller that holds the encoder output and its speech together."""
        return self.audio(self.whisper_frames(encoder_frames), self.prosody_frames(speech) if self.prosody else None)

    def word_spans(self, word_times: Sequence[tuple[float, float]], word_ids: np.ndarray, n_frames: int) -> np.ndarray:
        """Tie each word's tokens to the kept audio frames of its time span (half-open index ranges).

        `word_times` are (start, end) seconds per word, `word_ids` the source word of every token
        (-1 for special tokens). Words that lost all their tokens to truncation are skipped.
        """
        rows = []
        fps = WHISPER_FPS / self.stride
        for w, (start, end) in enumerate(word_times):
            tokens = np.flatnonzero(word_ids == w)
            if len(tokens) == 0:
                continue
            a0 = min(int(math.floor(start * fps)), n_frames - 1)
            a1 = min(max(int(math.ceil(end * fps)), a0 + 1), n_frames)
            rows.append((a0, a1, int(tokens[0]), int(tokens[-1]) + 1))
        return np.asarray(rows, dtype=np.int32).reshape(-1, 4)

    @staticmethod
    def text(states: np.ndarray) -> np.ndarray:
        """The text input: MiniLM token states at the features' precision."""
        return states.astype(FEATURE_DTYPE)


def context_window(history: Sequence[str], turns: int) -> tuple[str, ...]:
    """The last `turns` non-empty turns of `history` (oldest first): a turn's context.

    The one place that decides it, for training (DailyDialog's `Item.context`), `fdrl eval`
    (manifest `"context"`) and a live stream (its own final transcripts), so the model reads
    context the same way in all three. `turns` = 0 (or no history) means no context.
    """
    if turns <= 0:
        return ()
    kept = [t.strip() for t in history if t and t.strip()]
    return tuple(kept[-turns:])


def face_input(faces: Sequence) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(vision, face_posterior) of an utterance from the `FaceResult`s seen over it (None, None: no face)."""
    if not faces:
        return None, None
    return (np.stack([f.features for f in faces]).astype(FEATURE_DTYPE),
            np.mean([f.posterior for f in faces], axis=0).astype(np.float32))


WHISPER_VARIANT_SETTINGS = (f"':layerN' is encoders.whisper_layer = N, ':windowNs' encoders.whisper_window_s = N; "
                            f"without them 0 and {WHISPER_WINDOW_S}")


def whisper_variant(layer: int, window_s: int) -> str:
    """What sets Whisper's states apart beyond its weights: the block read and the window padding
    (empty for CTranslate2's last layer in 30-s windows, so older identities stay valid), read back
    by people through `WHISPER_VARIANT_SETTINGS`."""
    return (f":layer{layer}" if layer else "") + (f":window{window_s}s" if window_s != WHISPER_WINDOW_S else "")


def decoding_id(cfg: Config) -> str:
    """What decides a transcript besides the Whisper model and the crop: the [asr] decoding settings.

    It keys cached transcripts (not a checkpoint: the text branch reads words, whichever decoding
    found them), so a changed beam, or more audio heard after the crop (`vad.asr_tail_ms`),
    re-transcribes the training clips instead of reusing another decoding's words. The gate's thresholds are not in it: they act on the cached scores. The last
    part names how `fdrl.whisper` decodes beyond the settings (one segment per window, no timestamp
    tokens), so that a change there re-transcribes too.
    """
    a = cfg.asr
    heard = f":after{cfg.vad.asr_tail_ms}ms" if cfg.vad.asr_tail_ms else ""  # what Whisper hears past the crop
    return (f"asr:{a.language}:beam{a.beam_size}:{a.no_speech_threshold}:{a.log_prob_threshold}:words{int(a.word_timestamps)}"
            f":notimestamps{heard}")


def encoder_ids(cfg: Config) -> dict[str, object]:
    """What a checkpoint must match: the identity of every encoder feeding the model.

    The VAD crop is not part of it (a checkpoint stays usable when a user tunes the live VAD);
    it only keys cached audio features. Context turns are (a model trained on turns read with
    context reads them differently); none adds nothing, so older checkpoints stay valid. It hashes
    the text tuning file: compute it once per run.
    """
    from fdrl.text import tuned_id, tuned_path
    e = cfg.encoders
    context = f":context{e.text_context_turns}" if e.text_context_turns else ""
    return {"whisper": f"{e.whisper_model}:{e.whisper_compute_type}{whisper_variant(e.whisper_layer, e.whisper_window_s)}",
            "text": f"{e.text_model}:{e.text_max_tokens}:{tuned_id(tuned_path(cfg))}{context}",
            "audio_frame_stride": e.audio_frame_stride, "prosody": PROSODY_ID if e.prosody else "off",
            "face": Path(cfg.paths.face_weights).name}
