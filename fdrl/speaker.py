"""Speaker normalization: audio frames standardized by their own speaker's statistics.

Why: across unseen speakers, much of what separates utterances in Whisper's frame space is who
speaks, not how they feel. Standardizing every dimension by the speaker's own mean and spread
(per-speaker z-normalization, a standard step in speech emotion recognition; Busso et al., "Iterative
feature normalization scheme for automatic emotion detection from speech", IEEE TAC 2013, refine it
with neutral-speech estimates) is the largest single gain we measured on speaker-independent
RAVDESS folds (models/README.md).

The statistics need no labels. Offline (`fdrl train`, `fdrl eval`) they come from all of a
speaker's clips; live, from the utterances a session has heard so far, so a live speaker is
normalized by a running estimate. Few frames give noisy statistics, so a speaker's moments are
pooled with the training population's (`prior`) counted as `prior_frames` frames: a first
utterance is normalized almost like an average speaker, a speaker heard for a minute by their own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol, Sequence, TypeVar

import numpy as np

EPS = 1e-6


@dataclass(frozen=True)
class Moments:
    """Per-dimension frame count, mean and (population) variance; `+` pools two sets of frames."""

    n: float
    mean: np.ndarray
    var: np.ndarray

    @classmethod
    def of(cls, frames: np.ndarray) -> Moments:
        f = np.asarray(frames, dtype=np.float64)
        if not len(f):
            return cls(0.0, np.zeros(f.shape[1:]), np.zeros(f.shape[1:]))
        return cls(float(len(f)), f.mean(0), f.var(0))

    def __add__(self, other: Moments) -> Moments:
        n = self.n + other.n
        if n == 0:
            return self
        mean = (self.n * self.mean + other.n * other.mean) / n
        var = (self.n * (self.var + (self.mean - mean) ** 2) + other.n * (other.var + (other.mean - mean) ** 2)) / n
        return Moments(n, mean, var)

    def weighted(self, n: float) -> Moments:
        """The same distribution counted as `n` frames."""
        return Moments(float(n), self.mean, self.var)

    def standardize(self, frames: np.ndarray) -> np.ndarray:
        return ((frames - self.mean) / np.sqrt(self.var + EPS)).astype(np.float32)


class HasAudio(Protocol):
    speaker: str
    audio: np.ndarray | None


S = TypeVar("S", bound=HasAudio)


@dataclass(frozen=True)
class SpeakerNorm:
    """The population prior and its weight; fitted on training audio, shipped in the checkpoint."""

    prior: Moments
    prior_frames: float

    @classmethod
    def fit(cls, samples: Sequence[HasAudio], prior_frames: float) -> SpeakerNorm | None:
        """The prior from every audio frame of `samples`; None when none has audio (a text-only model)."""
        frames = [s.audio for s in samples if s.audio is not None and len(s.audio)]
        if not frames:
            return None
        return cls(Moments.of(np.concatenate(frames)), prior_frames)

    def apply(self, samples: Sequence[S]) -> list[S]:
        """Copies of `samples` with audio standardized per speaker, the statistics over all of that
        speaker's samples here. Samples with an empty speaker id are each a speaker of their own."""
        heard: dict[str, Moments] = {}
        for s in samples:
            if s.audio is not None and s.speaker:
                m = Moments.of(s.audio)
                heard[s.speaker] = heard[s.speaker] + m if s.speaker in heard else m
        return [s if s.audio is None else
                dataclasses.replace(s, audio=self.standardize(s.audio, heard[s.speaker] if s.speaker else Moments.of(s.audio)))
                for s in samples]

    def standardize(self, frames: np.ndarray, heard: Moments) -> np.ndarray:
        """`frames` standardized with the statistics of what was heard of their speaker, and the prior."""
        return (heard + self.prior.weighted(self.prior_frames)).standardize(frames)

    def to_dict(self) -> dict[str, object]:
        return {"n": self.prior.n, "mean": self.prior.mean.tolist(), "var": self.prior.var.tolist(),
                "prior_frames": self.prior_frames}

    @classmethod
    def from_dict(cls, d: dict) -> SpeakerNorm:
        prior = Moments(float(d["n"]), np.asarray(d["mean"], dtype=np.float64), np.asarray(d["var"], dtype=np.float64))
        return cls(prior, float(d["prior_frames"]))


def standardize(samples: Sequence[S], norm: SpeakerNorm | None) -> list[S]:
    """`norm.apply(samples)`, or the samples unchanged for a model trained without speaker normalization."""
    return norm.apply(samples) if norm else list(samples)


class RunningSpeaker:
    """What a live session has heard of its speaker so far. The engine standardizes an utterance with
    `heard_with(frames)` (so it counts itself, as offline) and calls `add` once the utterance is known
    to be speech: noise segments and a batch retried after a GPU fault are not counted twice or at all.
    Not thread-safe: only the inference thread touches it."""

    def __init__(self) -> None:
        self.heard: Moments | None = None

    def heard_with(self, frames: np.ndarray) -> Moments:
        current = Moments.of(frames)
        return current if self.heard is None else self.heard + current

    def add(self, frames: np.ndarray) -> None:
        self.heard = self.heard_with(frames)


class BatchSpeakers:
    """The speakers of one inference batch as each of its utterances finds them, in stream order.

    Why: an utterance counts everything its speaker said before it. When two utterances of one
    stream share a batch, the second must count the first, as it would have had the first been
    labelled alone; otherwise a label depends on how the worker happened to batch (on the machine's
    load, in a fast replay). `add` is kept here until `commit`, so a batch run again (after a GPU
    fault) counts nothing twice.
    """

    def __init__(self) -> None:
        self._heard: dict[int, tuple[RunningSpeaker, Moments]] = {}

    def heard_with(self, speaker: RunningSpeaker | None, frames: np.ndarray) -> Moments:
        """What was heard of `speaker` so far, this batch's earlier `add`s included, and `frames`;
        `frames` alone for an utterance with no stream speaker."""
        if speaker is None:
            return Moments.of(frames)
        heard = self._heard.get(id(speaker), (speaker, speaker.heard))[1]
        current = Moments.of(frames)
        return current if heard is None else heard + current

    def add(self, speaker: RunningSpeaker | None, frames: np.ndarray) -> None:
        if speaker is not None:
            self._heard[id(speaker)] = (speaker, self.heard_with(speaker, frames))

    def commit(self) -> None:
        """Hand what the batch heard to the streams' speakers."""
        for speaker, heard in self._heard.values():
            speaker.heard = heard
        self._heard.clear()


class SubsetNorm:
    """Training-time speaker normalization that looks like deployment: each draw standardizes a clip
    by the statistics of a random subset of its speaker's clips (the clip itself always among them),
    plus the prior.

    Why: offline every clip used to be normalized by all of its speaker's clips, but a live stream's
    first utterance has heard only itself, and a manifest without `speaker` normalizes each clip by
    itself. A model that never saw a clip normalized that way collapsed on it (issue 12: 285 of 400
    speaker-less clips took one label). The subset size k is drawn log-uniformly from 1 to all of the
    speaker's n clips, so the few-clips cases a live session starts with are well represented
    (P(k <= sqrt(n)) = 1/2) while the all-clips case of `fdrl eval` with speakers stays in reach.
    Samples with an empty speaker id are each their own speaker (k = 1).
    """

    def __init__(self, samples: Sequence[HasAudio], norm: SpeakerNorm) -> None:
        self.norm = norm
        dim = next((s.audio.shape[1] for s in samples if s.audio is not None), 0)
        # Per clip: frame count, sum and sum of squares, so any subset's moments are three sums.
        self._n = np.zeros(len(samples))
        self._sum = np.zeros((len(samples), dim))
        self._squares = np.zeros((len(samples), dim))
        self._speaker: list[str] = []
        members: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            key = s.speaker or f"\0{i}"
            self._speaker.append(key)
            if s.audio is not None and len(s.audio):
                f = np.asarray(s.audio, dtype=np.float64)
                self._n[i], self._sum[i], self._squares[i] = len(f), f.sum(0), (f * f).sum(0)
                members.setdefault(key, []).append(i)
        self._members = {k: np.array(v, dtype=np.int64) for k, v in members.items()}

    def subset(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of a random subset of sample i's speaker's clips: i itself and k - 1 others, with k
        log-uniform over 1 .. n (n = the speaker's clip count)."""
        others = self._members[self._speaker[i]]
        others = others[others != i]
        k = int(np.exp(rng.uniform(0.0, np.log(len(others) + 2.0))))  # floor of a log-uniform in [1, n + 1)
        return np.concatenate([[i], rng.choice(others, min(k, len(others) + 1) - 1, replace=False)]).astype(np.int64)

    def heard(self, idx: np.ndarray) -> Moments:
        """The pooled moments of the clips `idx` (from the stored sums: no frame is read again)."""
        n = self._n[idx].sum()
        mean = self._sum[idx].sum(0) / n
        return Moments(float(n), mean, np.maximum(self._squares[idx].sum(0) / n - mean * mean, 0.0))

    def draw(self, samples: Sequence[S], indices: Sequence[int], rng: np.random.Generator) -> list[S]:
        """Copies of `samples[i]` for i in `indices`, audio standardized by a fresh random subset each."""
        return [samples[i] if samples[i].audio is None else
                dataclasses.replace(samples[i], audio=self.norm.standardize(samples[i].audio, self.heard(self.subset(i, rng))))
                for i in indices]
