"""From `Item`s to `Sample`s: the frozen encoders, run once per utterance and cached on disk.

Audio is first cropped to its speech by the same VAD the live pipeline cuts utterances with, so
the model trains and is evaluated on what it will see live (acted clips carry leading and
trailing silence that a live segment never has; the model card says what training on whole
clips cost). One Whisper encoder pass then gives both the transcript (with word timestamps) and
the audio frames; the transcript's words are then encoded by MiniLM, and each word's tokens are
tied to its audio frames for the fine-grained alignment. How encoder outputs become the model's
input is `fdrl.inputs.Recipe`, shared with the live engine. Each encoder's output is cached under a key
made of its input (file content, words) and its identity, so re-training never re-encodes, a
changed encoder never reuses stale features, and tuning MiniLM does not re-run Whisper.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fdrl import asr_gate
from fdrl.audio import MIN_SPEECH_SAMPLES, SAMPLE_RATE, decode_audio
from fdrl.config import Config, Vad
from fdrl.data import Item
from fdrl.errors import UserError
from fdrl.inputs import Recipe, Sample, decoding_id, encoder_ids, face_input
from fdrl.outputs import atomic_write, os_reason, probe_folder
from fdrl.prosody import PROSODY_ID
from fdrl.vad import Segment, Segmenter


def speech_span(audio: np.ndarray, options: Vad) -> tuple[int, int, int] | None:
    """Sample range from the start of the first VAD segment to the end of the last, and the end of
    what Whisper hears after it (the last segment's `after`); None: no speech.

    The segments carry the pipeline's pre-roll and tail, so a cropped clip looks like a live one.
    """
    segmenter = Segmenter(options)
    segments = [e for e in [*segmenter.feed(audio), *segmenter.flush()] if isinstance(e, Segment)]
    if not segments:
        return None
    end = int(round(segments[-1].end * SAMPLE_RATE))
    return int(segments[0].start * SAMPLE_RATE), end, end + segments[-1].after.size


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


class FeatureCache:
    """Encoder outputs on disk, one .npz per part and content, under `features/<part>/`.

    Each part is keyed by its own input and the identity of the encoder that made it, so changing
    one encoder (tuning MiniLM, a new VAD crop) re-runs only that encoder.

    The cache only saves time, so it never costs a run: a folder that cannot be written is found
    at construction (a probe file), before any encoding, and the run goes on without storing
    features after one warning (what is already there is still read); so does a write that fails
    later (a disk that fills up). Entries are
    written through `atomic_write`, whose temporary names are unique per process and thread, so
    two runs that encode the same item at once both succeed and a reader never sees half an entry.
    """

    def __init__(self, root: Path, warn: Callable[[str], None] | None = None) -> None:
        self.root = root / "features"
        self._warn = warn or logging.getLogger(__name__).warning
        self.writable = True
        try:
            probe_folder(self.root)
        except OSError as e:
            self._stop_writing(f"feature cache {self.root} cannot be written: {os_reason(e)}")

    def _stop_writing(self, reason: str) -> None:
        self.writable = False
        self._warn(f"{reason}; going on without storing features (paths.cache_dir sets the cache folder)")

    def _path(self, part: str, key: str) -> Path:
        return self.root / part / key[:2] / f"{key}.npz"

    def get(self, part: str, key: str) -> dict[str, np.ndarray] | None:
        try:
            with np.load(self._path(part, key), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None  # not there, unreadable or damaged (a full disk, a crash mid-copy): recompute

    def put(self, part: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        if not self.writable:
            return
        try:
            with atomic_write(self._path(part, key), durable=False) as f:  # a lost entry is recomputed
                np.savez(f, **arrays)
        except OSError as e:  # an OutputError: its message names the entry and the reason
            self._stop_writing(str(e))


def _clip_key(identity: str, item: Item, path: Path, *extra: str) -> str:
    """Cache key of what an encoder made of `path` over the item's time span (and perturbation)."""
    augment = [item.augment.tag] if item.augment else []
    return _digest(identity, hashlib.sha256(path.read_bytes()).hexdigest(), f"{item.start}:{item.end}", *extra, *augment)


class FeatureExtractor:
    """Runs the frozen encoders over items. Encoders load lazily: text-only work never loads Whisper."""

    def __init__(self, cfg: Config, device: str = "cpu", cache: bool = True) -> None:
        self.cfg = cfg
        self.device = device
        self.recipe = Recipe.from_config(cfg)
        self.gate = asr_gate.Gate.from_config(cfg)
        self.vad = cfg.vad
        self._whisper = None
        self._text = None
        self._face = None
        self.cache = FeatureCache(cfg.resolve(cfg.paths.cache_dir)) if cache else None

    @functools.cached_property
    def encoder_ids(self) -> dict[str, object]:
        """`fdrl.inputs.encoder_ids`, computed once: every batch's cache keys read it."""
        return encoder_ids(self.cfg)

    @property
    def whisper(self):
        if self._whisper is None:
            from fdrl.whisper import Whisper
            self._whisper = Whisper.from_config(self.cfg, self.device)
        return self._whisper

    @property
    def text(self):
        if self._text is None:
            from fdrl.text import TextEncoder
            self._text = TextEncoder.from_config(self.cfg, self.device)
        return self._text

    @property
    def face(self):
        if self._face is None:
            from fdrl.face import FaceAnalyzer
            self._face = FaceAnalyzer.from_config(self.cfg, self.device)
        return self._face

    def extract(self, items: Sequence[Item], labels: Sequence[str], batch_size: int = 16,
                progress: Callable[[int], None] | None = None) -> list[Sample]:
        """Encode `items` (cached), in input order. `progress(n)` is called as items complete."""
        index = {name: i for i, name in enumerate(labels)}
        samples: list[Sample] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            samples += [_to_sample(arrays, index.get(it.label, -1), it.speaker, it.corpus)
                        for it, arrays in zip(chunk, self.encode(chunk))]
            if progress:
                progress(len(chunk))
        return samples

    def encode(self, items: Sequence[Item]) -> list[dict[str, np.ndarray]]:
        """Encode a batch of items: one Whisper pass per audio, one batched MiniLM call for all texts.

        An item's own `text` wins over the transcript; only transcribed words have times, so only
        they are tied to audio frames (`word_spans`).
        """
        out: list[dict[str, np.ndarray]] = [{} for _ in items]
        audio_idx = [i for i, it in enumerate(items) if it.audio is not None]
        for i, part in zip(audio_idx, self._audio_parts([items[i] for i in audio_idx])):
            out[i].update(part)
        if self.recipe.prosody and audio_idx:
            for i, part in zip(audio_idx, self._prosody_parts([items[i] for i in audio_idx])):
                out[i]["audio"] = self.recipe.audio(out[i]["audio"], part["prosody"])
        self._gate_transcripts(items, out)
        words: list[list[str]] = []
        for it, arrays in zip(items, out):
            if it.text is not None:
                arrays["transcript"] = np.array(it.text)
            words.append(it.text.split() if it.text is not None else [str(w) for w in arrays.pop("words", [])])
        with_text = [i for i in range(len(items)) if words[i]]
        contexts = [self.recipe.context(items[i].context) for i in with_text]
        for i, part in zip(with_text, self._text_parts([words[i] for i in with_text], contexts)):
            out[i]["text"] = part["text"]
            times = out[i].pop("word_times", None)
            if times is not None:
                out[i]["word_spans"] = self.recipe.word_spans(times, part["word_ids"], len(out[i]["audio"]))
        video_idx = [i for i, it in enumerate(items) if it.video is not None]
        for i, part in zip(video_idx, self._video_parts([items[i] for i in video_idx])):
            out[i].update(part)
        for arrays in out:
            arrays.pop("word_times", None)
        return out

    def _cached(self, part: str, n: int, key: Callable[[int], str],
                compute: Callable[[list[int]], list[dict[str, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
        """`n` results of one part: cache hits as they are, the misses computed in one call and stored."""
        keys = [key(i) for i in range(n)] if self.cache is not None else []
        found = [self.cache.get(part, k) for k in keys] if self.cache is not None else [None] * n
        misses = [i for i, hit in enumerate(found) if hit is None]
        for i, arrays in zip(misses, compute(misses) if misses else []):
            found[i] = arrays
            if self.cache is not None:
                self.cache.put(part, keys[i], arrays)
        return found  # type: ignore[return-value]

    def _audio_parts(self, items: Sequence[Item]) -> list[dict[str, np.ndarray]]:
        """Whisper frames (every stride-th) of the VAD-cropped speech, plus the transcript and word
        times for items without their own text."""
        identity = json.dumps({"whisper": self.encoder_ids["whisper"], "stride": self.recipe.stride,
                               "vad_crop": self.vad.crop()}, sort_keys=True)

        def key(i: int) -> str:
            return _clip_key(identity, items[i], items[i].audio, decoding_id(self.cfg) if items[i].text is None else "")

        def compute(idx: list[int]) -> list[dict[str, np.ndarray]]:
            speech, after = zip(*(self.speech_and_after(items[i]) for i in idx))
            need_asr = [items[i].text is None for i in idx]
            parts = []
            for asr, (frames, transcript) in zip(need_asr, self.whisper.process(list(speech), any(need_asr), after=list(after))):
                arrays = {"audio": self.recipe.whisper_frames(frames)}
                if asr and transcript is not None:
                    arrays["asr_scores"] = asr_gate.scores(transcript)
                    arrays |= {"transcript": np.array(transcript.text.strip()),
                               "words": np.array([w.text.strip() for w in transcript.words], dtype=str),
                               "word_times": np.array([(w.start, w.end) for w in transcript.words],
                                                      dtype=np.float64).reshape(-1, 2)}
                parts.append(arrays)
            return parts

        return self._cached("audio", len(items), key, compute)

    def _gate_transcripts(self, items: Sequence[Item], out: list[dict[str, np.ndarray]]) -> None:
        """Drop the transcribed words the ASR was unsure of (`fdrl.asr_gate`, the live engine's rule):
        such a clip is labelled from its voice alone, and `text_dropped` says why."""
        for i, it in enumerate(items):
            if it.audio is None or it.text is not None or "words" not in out[i]:
                continue
            reason = asr_gate.text_verdict(out[i].pop("asr_scores"), self.gate)
            if reason == asr_gate.LOW_CONFIDENCE:
                out[i].pop("words", None)
                out[i].pop("word_times", None)
                out[i]["text_dropped"] = np.array(reason)

    def _prosody_parts(self, items: Sequence[Item]) -> list[dict[str, np.ndarray]]:
        """Prosody rows of the same VAD-cropped speech, on the audio frames' grid (kept apart from
        Whisper's part, so switching `encoders.prosody` never re-runs Whisper)."""
        identity = json.dumps({"prosody": PROSODY_ID, "stride": self.recipe.stride, "vad_crop": self.vad.crop()},
                              sort_keys=True)
        return self._cached(
            "prosody", len(items), lambda i: _clip_key(identity, items[i], items[i].audio),
            lambda idx: [{"prosody": self.recipe.prosody_frames(self.speech(items[i]))} for i in idx])

    def _text_parts(self, words: Sequence[list[str]], contexts: Sequence[tuple[str, ...]]) -> list[dict[str, np.ndarray]]:
        """MiniLM token states of each word sequence read with its context turns (`Recipe.context`),
        with each token's source word. The context is part of the key: the same words said after
        other turns have other states."""
        identity = self.encoder_ids["text"]
        key = lambda i: _digest(str(identity), json.dumps(words[i]), *(["context", *contexts[i]] if contexts[i] else []))
        return self._cached(
            "text", len(words), key,
            lambda idx: [{"text": self.recipe.text(states), "word_ids": word_ids}
                         for states, word_ids in self.text.encode([words[i] for i in idx], contexts=[contexts[i] for i in idx])])

    def _video_parts(self, items: Sequence[Item]) -> list[dict[str, np.ndarray]]:
        identity = json.dumps({"face": self.encoder_ids["face"], **dataclasses.asdict(self.cfg.face)}, sort_keys=True)
        return self._cached(
            "video", len(items), lambda i: _clip_key(identity, items[i], items[i].video),
            lambda idx: [self.encode_video(items[i]) for i in idx])

    def speech(self, item: Item) -> np.ndarray:
        """The item's audio (its time span), cropped to the speech (then perturbed, for an augmented
        copy: the crop is the clean clip's); a UserError when too short to label."""
        return self.speech_and_after(item)[0]

    def speech_and_after(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        """`speech`, and the audio after it that Whisper hears as it would live (`crop`), each perturbed alone."""
        audio = decode_audio(item.audio, item.start, item.end)
        if audio.size < MIN_SPEECH_SAMPLES:
            raise UserError(f"{item.audio}: {audio.size / SAMPLE_RATE:.3f} s of audio is too short to label "
                            f"(at least {MIN_SPEECH_SAMPLES / SAMPLE_RATE:g} s: give a longer clip)")
        speech, after = self.crop(audio)
        if item.augment:
            return item.augment.apply(speech), item.augment.apply(after) if after.size else after
        return speech, after

    def crop(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The speech part of a clip, as the live VAD would cut it (the whole clip if VAD hears none),
        and the audio after it that the live segment would carry for Whisper (`Segment.after`)."""
        span = speech_span(audio, self.vad)
        return (audio[span[0]:span[1]], audio[span[1]:span[2]]) if span else (audio, audio[:0])

    def encode_video(self, item: Item) -> dict[str, np.ndarray]:
        """Face features at `face.rate_hz` over the item's time span; nothing if no face is ever seen."""
        from fdrl.video import read_frames
        frames = [f for _, f in read_frames(item.video, self.cfg.face.rate_hz, item.start, item.end)]
        vision, posterior = face_input([r for r in self.face.analyze_batch(frames) if r is not None] if frames else [])
        return {} if vision is None else {"vision": vision, "face_posterior": posterior}


def _to_sample(arrays: dict[str, np.ndarray], label: int, speaker: str, corpus: str = "") -> Sample:
    get = arrays.get
    return Sample(label=label, speaker=speaker, audio=get("audio"), text=get("text"), vision=get("vision"),
                  word_spans=get("word_spans"), transcript=str(get("transcript", "")),
                  face_posterior=get("face_posterior"), corpus=corpus)
