"""From `Item`s to `Sample`s: the frozen encoders, run once per utterance and cached on disk.

Audio is first cropped to its speech by the same VAD the live pipeline cuts utterances with, so
the model trains and is evaluated on what it will see live (a whole RAVDESS clip carries ~0.9 s
of leading silence that a live segment never has; training on whole clips cost about 10 points of
accuracy through the pipeline). One Whisper encoder pass then gives both the transcript (with word
timestamps) and the audio frames;
the transcript's words are then encoded by MiniLM, and each word's tokens are tied to its audio
frames (`word_spans`) for the fine-grained alignment. Each encoder's output is cached under a key
made of its input (file content, words) and its identity, so re-training never re-encodes, a
changed encoder never reuses stale features, and tuning MiniLM does not re-run Whisper.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fdrl.audio import SAMPLE_RATE, decode_audio
from fdrl.config import Config
from fdrl.data import Item
from fdrl.prosody import PROSODY_ID, join, prosody
from fdrl.text import tuned_id, tuned_path
from fdrl.vad import Segment, Segmenter, VadOptions

WHISPER_FPS = 50  # Whisper encoder frames per second (20 ms hop)


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


def word_spans(words: Sequence[tuple[float, float]], word_ids: np.ndarray, stride: int, n_frames: int) -> np.ndarray:
    """Tie each word's tokens to the audio frames of its time span (half-open index ranges).

    `words` are (start, end) seconds per word, `word_ids` the source word of every token (-1 for
    special tokens). Words that lost all their tokens to truncation are skipped.
    """
    rows = []
    fps = WHISPER_FPS / stride
    for w, (start, end) in enumerate(words):
        tokens = np.flatnonzero(word_ids == w)
        if len(tokens) == 0:
            continue
        a0 = min(int(math.floor(start * fps)), n_frames - 1)
        a1 = min(max(int(math.ceil(end * fps)), a0 + 1), n_frames)
        rows.append((a0, a1, int(tokens[0]), int(tokens[-1]) + 1))
    return np.asarray(rows, dtype=np.int32).reshape(-1, 4)


def speech_span(audio: np.ndarray, options: VadOptions) -> tuple[int, int] | None:
    """Sample range from the start of the first VAD segment to the end of the last (None: no speech).

    The segments carry the pipeline's pre-roll and tail, so a cropped clip looks like a live one.
    """
    segmenter = Segmenter(options)
    segments = [e for e in [*segmenter.feed(audio), *segmenter.flush()] if isinstance(e, Segment)]
    if not segments:
        return None
    return int(segments[0].start * SAMPLE_RATE), int(round(segments[-1].end * SAMPLE_RATE))


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
    """

    def __init__(self, root: Path) -> None:
        self.root = root / "features"

    def _path(self, part: str, key: str) -> Path:
        return self.root / part / key[:2] / f"{key}.npz"

    def get(self, part: str, key: str) -> dict[str, np.ndarray] | None:
        path = self._path(part, key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None  # damaged (a full disk, a crash mid-copy): recompute

    def put(self, part: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        path = self._path(part, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)  # atomic: readers never see half a file


def _clip_key(identity: str, item: Item, path: Path, *extra: str) -> str:
    """Cache key of what an encoder made of `path` over the item's time span."""
    return _digest(identity, hashlib.sha256(path.read_bytes()).hexdigest(), f"{item.start}:{item.end}", *extra)


class FeatureExtractor:
    """Runs the frozen encoders over items. Encoders load lazily: text-only work never loads Whisper."""

    def __init__(self, cfg: Config, device: str = "cpu", cache: bool = True) -> None:
        self.cfg = cfg
        self.device = device
        self.stride = cfg.encoders.audio_frame_stride
        self.vad = VadOptions.from_config(cfg.vad)
        self._whisper = None
        self._text = None
        self._face = None
        self.cache = FeatureCache(cfg.resolve(cfg.paths.cache_dir)) if cache else None

    @functools.cached_property
    def encoder_ids(self) -> dict[str, object]:
        """What a checkpoint must match: the identity of every encoder feeding the model.

        The VAD crop is not part of it (a checkpoint stays usable when a user tunes the live VAD);
        it only keys the cached audio features. Computed once: it hashes the text tuning file
        (6 ms), and every batch's cache keys read it.
        """
        e = self.cfg.encoders
        return {"whisper": f"{e.whisper_model}:{e.whisper_compute_type}",
                "text": f"{e.text_model}:{e.text_max_tokens}:{tuned_id(tuned_path(self.cfg))}",
                "audio_frame_stride": e.audio_frame_stride, "prosody": PROSODY_ID if e.prosody else "off",
                "face": Path(self.cfg.paths.face_weights).name}

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
            samples += [_to_sample(arrays, index.get(it.label, -1), it.speaker)
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
        if self.cfg.encoders.prosody and audio_idx:
            for i, part in zip(audio_idx, self._prosody_parts([items[i] for i in audio_idx])):
                out[i]["audio"] = join(out[i]["audio"], part["prosody"])
        words: list[list[str]] = []
        for it, arrays in zip(items, out):
            if it.text is not None:
                arrays["transcript"] = np.array(it.text)
            words.append(it.text.split() if it.text is not None else [str(w) for w in arrays.pop("words", [])])
        with_text = [i for i in range(len(items)) if words[i]]
        for i, part in zip(with_text, self._text_parts([words[i] for i in with_text])):
            out[i]["text"] = part["text"]
            times = out[i].pop("word_times", None)
            if times is not None:
                out[i]["word_spans"] = word_spans(times, part["word_ids"], self.stride, len(out[i]["audio"]))
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
        identity = json.dumps({"whisper": self.encoder_ids["whisper"], "stride": self.stride,
                               "vad_crop": dataclasses.asdict(self.vad)}, sort_keys=True)

        def key(i: int) -> str:
            return _clip_key(identity, items[i], items[i].audio, "asr" if items[i].text is None else "")

        def compute(idx: list[int]) -> list[dict[str, np.ndarray]]:
            audios = [self.speech(items[i]) for i in idx]
            need_asr = [items[i].text is None for i in idx]
            parts = []
            for asr, (frames, transcript) in zip(need_asr, self.whisper.process(audios, transcribe=any(need_asr))):
                arrays = {"audio": frames[:: self.stride].astype(np.float16)}
                if asr and transcript is not None:
                    arrays |= {"transcript": np.array(transcript.text.strip()),
                               "words": np.array([w.text.strip() for w in transcript.words], dtype=str),
                               "word_times": np.array([(w.start, w.end) for w in transcript.words],
                                                      dtype=np.float64).reshape(-1, 2)}
                parts.append(arrays)
            return parts

        return self._cached("audio", len(items), key, compute)

    def _prosody_parts(self, items: Sequence[Item]) -> list[dict[str, np.ndarray]]:
        """Prosody rows of the same VAD-cropped speech, on the audio frames' grid (kept apart from
        Whisper's part, so switching `encoders.prosody` never re-runs Whisper)."""
        identity = json.dumps({"prosody": PROSODY_ID, "stride": self.stride, "vad_crop": dataclasses.asdict(self.vad)},
                              sort_keys=True)
        return self._cached(
            "prosody", len(items), lambda i: _clip_key(identity, items[i], items[i].audio),
            lambda idx: [{"prosody": prosody(self.speech(items[i]))[:: self.stride].astype(np.float16)} for i in idx])

    def _text_parts(self, words: Sequence[list[str]]) -> list[dict[str, np.ndarray]]:
        """MiniLM token states of each word sequence, with each token's source word."""
        identity = self.encoder_ids["text"]
        return self._cached(
            "text", len(words), lambda i: _digest(str(identity), json.dumps(words[i])),
            lambda idx: [{"text": states.astype(np.float16), "word_ids": word_ids}
                         for states, word_ids in self.text.encode([words[i] for i in idx])])

    def _video_parts(self, items: Sequence[Item]) -> list[dict[str, np.ndarray]]:
        identity = json.dumps({"face": self.encoder_ids["face"], **dataclasses.asdict(self.cfg.face)}, sort_keys=True)
        return self._cached(
            "video", len(items), lambda i: _clip_key(identity, items[i], items[i].video),
            lambda idx: [self.encode_video(items[i]) for i in idx])

    def speech(self, item: Item) -> np.ndarray:
        """The item's audio (its time span), cropped to the speech."""
        return self.crop(decode_audio(item.audio, item.start, item.end))

    def crop(self, audio: np.ndarray) -> np.ndarray:
        """The speech part of a clip, as the live VAD would cut it; the whole clip if VAD hears none."""
        span = speech_span(audio, self.vad)
        return audio[span[0]:span[1]] if span else audio

    def encode_video(self, item: Item) -> dict[str, np.ndarray]:
        """Face features at `face.rate_hz` over the item's time span; nothing if no face is ever seen."""
        from fdrl.video import read_frames
        frames = [f for _, f in read_frames(item.video, self.cfg.face.rate_hz, item.start, item.end)]
        faces = [r for r in self.face.analyze_batch(frames) if r is not None] if frames else []
        if not faces:
            return {}
        return {"vision": np.stack([r.features for r in faces]).astype(np.float16),
                "face_posterior": np.mean([r.posterior for r in faces], axis=0).astype(np.float32)}


def _to_sample(arrays: dict[str, np.ndarray], label: int, speaker: str) -> Sample:
    get = arrays.get
    return Sample(label=label, speaker=speaker, audio=get("audio"), text=get("text"), vision=get("vision"),
                  word_spans=get("word_spans"), transcript=str(get("transcript", "")),
                  face_posterior=get("face_posterior"))
