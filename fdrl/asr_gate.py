"""Which modalities an utterance may use: the ASR's own confidence decides whether its words count.

Why: the bundled Whisper is English-only (tiny.en). On speech it cannot transcribe (another
language, mumbling) it still writes fluent English words, and the text branch then labels words
that were never said: on an Italian acted corpus the fused label scored below the voice alone
(issue 12). So a transcript reaches the text branch only when the ASR was sure of it, judged by
the signals Whisper gives about itself: the mean log-probability of its tokens and the mean
probability of its words (thresholds measured on English vs Italian corpora by
`scripts/asr_gate_probe.py`; figures in the model card).

And a segment without words is not always noise: a laugh or a sob has a voice and an emotion but
no words. It keeps its voice-only label when enough of it is voiced (periodic, as a voice is and
a door, a click, a fan or a rumble is not: Praat's pitch tracker decides, through
`praat-parselmouth`); otherwise it is withdrawn as before. Why Praat here and not the voicing flag
of the model's prosody frames (`fdrl.prosody`): Praat's path search called low-frequency rumble
unvoiced where the plain autocorrelation peak called it voice, but as the model's pitch input it
scored lower on leave-one-corpus-out (model card), so each does the job it measured best at.

One function, `decide`, serves every path: the live engine (stream/inference.py), and offline
features for training and `fdrl eval` (fdrl/features.py), so a clip uses the same modalities
whichever way it comes in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np
import parselmouth

from fdrl.audio import SAMPLE_RATE
from fdrl.prosody import F0_MAX, F0_MIN

if TYPE_CHECKING:
    from fdrl.config import Config

# A transcript that gzip compresses this well repeats itself: Whisper's own hallucination loop
# ("going to be going to be ..."), confident token by token. Whisper's default threshold.
MAX_COMPRESSION_RATIO = 2.4
OFF_LOGPROB = -100.0                 # asr.gate_min_avg_logprob's floor: with gate_min_word_prob = 0, no gate

# Why a transcript did not reach the text branch (the `text_dropped` of an utterance).
NO_WORDS = "no_words"                # the ASR heard no words: voice only (a laugh, a sob)
LOW_CONFIDENCE = "low_asr_confidence"  # words the ASR was unsure of: likely invented (another language)


class WordLike(Protocol):
    probability: float


class TranscriptLike(Protocol):
    text: str
    words: Sequence[WordLike]
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True)
class Gate:
    """The thresholds (config.toml [asr]); a transcript below either, or one that repeats itself, is dropped."""

    min_avg_logprob: float            # mean token log-probability of the kept segments
    min_word_prob: float              # mean word probability
    min_voiced_s: float               # a wordless segment with less voiced audio than this is noise

    @property
    def off(self) -> bool:
        """Both thresholds at their floor (`asr.gate_min_avg_logprob = -100`, `gate_min_word_prob = 0`): every transcript is kept."""
        return self.min_avg_logprob <= OFF_LOGPROB and self.min_word_prob <= 0.0

    @classmethod
    def from_config(cls, cfg: Config) -> Gate:
        a = cfg.asr
        return cls(a.gate_min_avg_logprob, a.gate_min_word_prob, a.gate_min_voiced_s)


def mean_word_prob(words: Sequence[WordLike]) -> float:
    """The mean probability Whisper gave the words (1.0 when there are none: nothing to doubt)."""
    return float(np.mean([w.probability for w in words])) if words else 1.0


def scores(transcript: TranscriptLike) -> np.ndarray:
    """What the gate reads of a transcript, as the array the feature cache stores beside the words:
    [word count, mean token log-probability, mean word probability, compression ratio]."""
    return np.array([len(transcript.words), transcript.avg_logprob, mean_word_prob(transcript.words),
                     getattr(transcript, "compression_ratio", 0.0)], dtype=np.float64)


def signals(transcript: TranscriptLike) -> dict[str, float]:
    """The ASR's confidence signals of one transcript, as plain numbers (for logs and the probe)."""
    return {"n_words": len(transcript.words), "avg_logprob": round(float(transcript.avg_logprob), 4),
            "mean_word_prob": round(mean_word_prob(transcript.words), 4),
            "no_speech_prob": round(float(transcript.no_speech_prob), 4),
            "compression_ratio": round(float(getattr(transcript, "compression_ratio", 0.0)), 4)}


def text_verdict(asr_scores: np.ndarray, gate: Gate) -> str | None:
    """Why the words behind `asr_scores` (see `scores`) must not reach the text branch, or None when they may."""
    n_words, avg_logprob, word_prob, compression_ratio = (float(x) for x in asr_scores)
    if n_words == 0:
        return NO_WORDS
    if gate.off:
        return None
    if (avg_logprob < gate.min_avg_logprob or word_prob < gate.min_word_prob
            or compression_ratio > MAX_COMPRESSION_RATIO):
        return LOW_CONFIDENCE
    return None


def decide(transcript: TranscriptLike, gate: Gate) -> str | None:
    """`text_verdict` of a transcript: None = use its words; else the reason they are dropped."""
    return text_verdict(scores(transcript), gate)


def voiced_seconds(speech: np.ndarray) -> float:
    """Seconds of 16 kHz `speech` on Praat's voiced pitch path (none in audio shorter than its
    analysis window, three periods of the lowest pitch searched)."""
    try:
        track = parselmouth.Sound(speech.astype(np.float64), SAMPLE_RATE).to_pitch_ac(
            time_step=0.02, pitch_floor=F0_MIN, pitch_ceiling=F0_MAX)
    except parselmouth.PraatError:
        return 0.0
    return float(track.count_voiced_frames() * track.dx)


def is_voice(speech: np.ndarray, gate: Gate) -> bool:
    """Whether a segment without words still carries a voice worth labelling (a laugh, a sob)."""
    return voiced_seconds(speech) >= gate.min_voiced_s
