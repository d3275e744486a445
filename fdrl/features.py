"""From `Item`s to `Sample`s: the frozen encoders, run once per utterance and cached on disk.

Audio is first cropped to its speech by the same VAD the live pipeline cuts utterances with, so
the model trains and is evaluated on what it will see live (a whole RAVDESS clip carries ~0.9 s
of leading silence that a live segment never has; training on whole clips cost about 10 points of
accuracy through the pipeline). One Whisper encoder pass then gives both the transcript (with word
timestamps) and the audio frames;
the transcript's words are then encoded by MiniLM, and each word's tokens are tied to its audio
frames (`word_spans`) for the fine-grained alignment. Results are cached under a key made of the
file's content and the encoders' identity, so re-training never re-encodes and a changed encoder
never reuses stale features.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fdrl.audio import SAMPLE_RATE, decode_audio
from fdrl.config import Config
from fdrl.data import Item
from fdrl.text import tuned_id, tuned_path
from fdrl.vad import Segment, Segmenter, VadOptions

WHISPER_FPS = 50  # Whisper encoder frames per second (20 ms hop)


@dataclass
class Sample:
    """One encoded utterance: the model's input. Absent modalities are None."""

    label: int                              # index into the label set; -1 when unknown
    speaker: str
    audio: np.ndarray | None = None         # [T_a, 384] Whisper encoder frames (every stride-th)
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
    """Encoded utterances on disk, one .npz per item, keyed by content + encoder identity."""

    def __init__(self, root: Path, encoder_key: str, audio_key: str) -> None:
        self.root = root / "features" / encoder_key[:16]
        self.encoder_key = encoder_key
        self.audio_key = audio_key  # what shapes audio before the encoders (the VAD crop)

    def key(self, item: Item) -> str:
        parts: list[bytes | str] = [self.encoder_key, item.text or "", f"{item.start}:{item.end}"]
        if item.audio is not None:
            parts.append(self.audio_key)
        for path in (item.audio, item.video):
            parts.append(hashlib.sha256(path.read_bytes()).hexdigest() if path else "")
        return _digest(*parts)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError):
            return None  # a torn write from an interrupted run: recompute

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)  # atomic: readers never see half a file


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
        # The VAD crop keys audio items only, so a VAD setting change keeps text features cached. It is
        # not part of `encoder_ids`: a checkpoint stays usable when a user tunes the live VAD.
        audio_key = json.dumps({"vad_crop": dataclasses.asdict(self.vad)}, sort_keys=True)
        self.cache = (FeatureCache(cfg.resolve(cfg.paths.cache_dir), _digest(json.dumps(self.encoder_ids, sort_keys=True)), audio_key)
                      if cache else None)

    @property
    def encoder_ids(self) -> dict[str, object]:
        """What a checkpoint must match: the identity of every encoder feeding the model."""
        e = self.cfg.encoders
        return {"whisper": f"{e.whisper_model}:{e.whisper_compute_type}",
                "text": f"{e.text_model}:{e.text_max_tokens}:{tuned_id(tuned_path(self.cfg))}",
                "audio_frame_stride": e.audio_frame_stride, "face": Path(self.cfg.paths.face_weights).name}

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
        samples: list[Sample | None] = [None] * len(items)
        todo: list[int] = []
        keys: list[str | None] = [None] * len(items)
        for i, item in enumerate(items):
            if self.cache is not None:
                keys[i] = self.cache.key(item)
                hit = self.cache.get(keys[i])
                if hit is not None:
                    samples[i] = _to_sample(hit, index.get(item.label, -1), item.speaker)
                    if progress:
                        progress(1)
                    continue
            todo.append(i)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            for i, arrays in zip(chunk, self.encode([items[i] for i in chunk])):
                if self.cache is not None:
                    self.cache.put(keys[i], arrays)
                samples[i] = _to_sample(arrays, index.get(items[i].label, -1), items[i].speaker)
            if progress:
                progress(len(chunk))
        return samples  # type: ignore[return-value]

    def encode(self, items: Sequence[Item]) -> list[dict[str, np.ndarray]]:
        """Encode a batch of items: one Whisper pass per audio, one batched MiniLM call for all texts."""
        out: list[dict[str, np.ndarray]] = [{} for _ in items]
        words: list[list[str]] = [[] for _ in items]
        times: list[list[tuple[float, float]] | None] = [None] * len(items)
        audio_idx = [i for i, it in enumerate(items) if it.audio is not None]
        if audio_idx:
            audios = [self.crop(decode_audio(items[i].audio, items[i].start, items[i].end)) for i in audio_idx]
            need_asr = [items[i].text is None for i in audio_idx]
            results = self.whisper.process(audios, transcribe=any(need_asr))
            for i, asr, (frames, transcript) in zip(audio_idx, need_asr, results):
                out[i]["audio"] = frames[:: self.stride].astype(np.float16)
                if asr and transcript is not None:
                    words[i] = [w.text.strip() for w in transcript.words]
                    times[i] = [(w.start, w.end) for w in transcript.words]
                    out[i]["transcript"] = np.array(transcript.text.strip())
        for i, it in enumerate(items):
            if it.text is not None:
                words[i] = it.text.split()
                out[i]["transcript"] = np.array(it.text)
        with_text = [i for i in range(len(items)) if words[i]]
        if with_text:
            for i, (states, word_ids) in zip(with_text, self.text.encode([words[i] for i in with_text])):
                out[i]["text"] = states.astype(np.float16)
                if times[i] is not None and "audio" in out[i]:
                    out[i]["word_spans"] = word_spans(times[i], word_ids, self.stride, len(out[i]["audio"]))
        for i, it in enumerate(items):
            if it.video is not None:
                out[i].update(self.encode_video(it))
        return out

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
