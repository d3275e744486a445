"""The inference worker: one owner of Whisper, MiniLM and FDRL (and of the GPU), shared by every stream.

Requests from all streams queue up; the worker takes up to `runtime.max_batch` of them, waiting at
most `runtime.max_wait_ms` for company, and runs the batch on its single compute thread:

1. one batched Whisper encoder pass → audio frames → FDRL on audio alone → *provisional* labels,
   published at once so the UI reacts while Whisper decodes;
2. Whisper decoding, reusing each utterance's encoder output (no second encoder pass);
3. one batched MiniLM call for the transcripts → FDRL on audio + text (+ face features when the
   checkpoint has a vision branch) → late fusion with the face posterior → *final* labels.

A request marked `early` (the VAD heard a pause, not yet the end: `fdrl.vad.SegmentPause`) runs
steps 1-2 only, after the batch's other requests, and leaves its frames and transcript in
`Engine.ahead`; the final request for the same samples then starts at step 3. Nothing else is
kept or published for it, so an early pass whose speech went on changes no state.

A GPU that runs out of memory mid-batch is not a lost utterance: the engine moves to the CPU for
good, notes it in `Engine.fallbacks` (the pipeline turns each note into a `Fallback` event) and
runs the same batch again there.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fdrl import checkpoint as ckpt_mod
from fdrl import asr_gate
from fdrl.config import Config
from fdrl.inputs import WHISPER_FPS, Recipe, Sample, encoder_ids
from fdrl.predict import posteriors, resolve_device, warm_bf16
from fdrl.speaker import BatchSpeakers, Moments, RunningSpeaker
from fdrl.text import TextEncoder
from fdrl.whisper import Transcript, Whisper


@dataclass
class Result:
    """What the worker says about one utterance, provisional or final."""

    label: str
    scores: dict[str, float]
    modalities: tuple[str, ...]
    text: str = ""
    speech: bool = True                      # False: no words and too little voice (noise): withdrawn
    timings: dict[str, float] = field(default_factory=dict)
    text_dropped: str | None = None          # why the words did not count (fdrl.asr_gate), None when they did


@dataclass
class Request:
    audio: np.ndarray                        # float32 mono 16 kHz
    vision: np.ndarray | None = None         # [T_v, FACE_DIM] face features over the utterance
    face_posterior: np.ndarray | None = None
    speaker: RunningSpeaker | None = None    # the stream's speaker statistics; None: this utterance alone
    history: deque[str] | None = None        # the stream's final transcripts so far (bounded); None: no context
    provisional: asyncio.Future = None       # type: ignore[assignment]  # set by submit()
    final: asyncio.Future = None             # type: ignore[assignment]
    submitted: float = 0.0                   # perf_counter when queued
    queue_s: float = 0.0                     # time spent waiting for the worker
    early: bool = False                      # encode and transcribe ahead of the segment's end; publish nothing
    after: np.ndarray | None = None          # the audio that followed, heard by Whisper only (fdrl.vad.Segment.after)

    @functools.cached_property
    def samples_key(self) -> bytes:
        """Identity of the samples: an early pass and the final over the same samples share it."""
        digest = hashlib.blake2b(np.ascontiguousarray(self.audio, np.float32).tobytes(), digest_size=16)
        if self.after is not None and len(self.after):
            digest.update(np.ascontiguousarray(self.after, np.float32).tobytes())
        return digest.digest()


@dataclass
class Prepared:
    """An early pass's work: the encoder frames and transcript of one segment's samples."""

    frames: np.ndarray
    transcript: Transcript
    seconds: float                           # what the early pass cost (its batch's encode + its decode)


class Ahead:
    """Early passes by their samples, oldest dropped first: bounded, so passes whose speech went on
    (never claimed) cannot pile up. Used from the compute thread only."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[bytes, Prepared] = OrderedDict()
        self.stored = self.claimed = 0           # early passes done, and those a final used (the rest was spent on speech that went on)

    def put(self, request: Request, prepared: Prepared) -> None:
        self._items[request.samples_key] = prepared
        self.stored += 1
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def take(self, request: Request) -> Prepared | None:
        """The early pass over the request's samples, if any (nothing is hashed while none is kept: replay)."""
        prepared = self._items.pop(request.samples_key, None) if self._items else None
        self.claimed += prepared is not None
        return prepared

    def __len__(self) -> int:
        return len(self._items)


class Engine:
    """The models, loaded once and warmed up. Blocking: call from the worker's compute thread only."""

    def __init__(self, cfg: Config, checkpoint: Path | None = None, device: str | None = None) -> None:
        self.cfg = cfg
        # Why the engine runs on a lesser device than asked, oldest first. Appended on the compute
        # thread, read from the event loop: a list only ever appended to needs no lock.
        self.fallbacks: list[str] = []
        self.device = resolve_device(device or cfg.runtime.device, warn=self.fallbacks.append)
        self.ckpt = ckpt_mod.load(checkpoint or cfg.resolve(cfg.paths.checkpoint), encoder_ids(cfg), self.device)
        self.labels = list(self.ckpt.labels)
        self.recipe = Recipe.from_config(cfg)
        self.gate = asr_gate.Gate.from_config(cfg)
        self.ahead = Ahead(4 * cfg.runtime.max_batch)
        self._load_encoders()

    def _load_encoders(self) -> None:
        self.whisper = Whisper.from_config(self.cfg, self.device, warn=self.fallbacks.append)
        self.text = TextEncoder.from_config(self.cfg, self.device) if "text" in self.ckpt.dims else None

    def to_cpu(self, reason: str) -> None:
        """Move every model to the CPU for the rest of the session (after the GPU ran out of memory)."""
        self.fallbacks.append(f"{reason}: running on the CPU from now on (slower)")
        self.device = "cpu"
        self.ckpt.model.to("cpu")
        self._load_encoders()  # CTranslate2 models cannot move: Whisper (and MiniLM with it) load again
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def warmup(self) -> None:
        """Run one utterance of noise end to end, so the first real one pays no lazy initialisation."""
        noise = (0.01 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
        req = Request(noise)
        [audio] = self.audio_frames([req], self.encode([req]))
        self.classify([Sample(-1, "", audio=self.standardize(audio, Moments.of(audio)))])
        if self.text is not None:
            self.text.encode([["warm", "up"]])
        if self.bf16:
            frames = self.cfg.vad.max_utterance_ms * WHISPER_FPS // (1000 * self.recipe.stride)
            warm_bf16(self.ckpt.model, self.cfg.runtime.max_batch, {"audio": frames, "text": self.cfg.encoders.text_max_tokens})

    @property
    def bf16(self) -> bool:
        return self.device == "cpu" and self.cfg.runtime.cpu_bf16

    def encode(self, requests: list[Request]):
        return self.whisper.encode_shared([r.audio for r in requests], [r.after for r in requests])

    def audio_frames(self, requests: list[Request], encoded) -> list[np.ndarray]:
        """The model's audio input from `encode`'s output (`fdrl.inputs.Recipe`, as offline)."""
        return [self.recipe.audio_input(frames, r.audio) for (frames, _), r in zip(encoded, requests)]

    @torch.inference_mode()
    def classify(self, samples: list[Sample]) -> np.ndarray:
        return posteriors(self.ckpt, samples, self.cfg.late_fusion, bf16=self.bf16)

    def standardize(self, frames: np.ndarray, heard: Moments) -> np.ndarray:
        """Frames as the checkpoint expects them: standardized by what was `heard` of their speaker."""
        norm = self.ckpt.speaker_norm
        return frames if norm is None else norm.standardize(frames, heard)

    def transcribe(self, request: Request, window: np.ndarray | None) -> Transcript:
        return self.whisper.transcribe(request.audio, encoder_output=window, after=request.after)

    def scores(self, p: np.ndarray) -> tuple[str, dict[str, float]]:
        return self.labels[int(p.argmax())], {name: round(float(v), 4) for name, v in zip(self.labels, p)}

    def run_batch(self, batch: list[Request], publish) -> None:
        """The three steps of the module docstring for one batch; `publish(future, result)` is thread-safe.

        Out of GPU memory, the batch runs again on the CPU. Results it had already published stand:
        a future is settled once, so the retry's copies of them are ignored.
        """
        final = [r for r in batch if not r.early]
        try:
            if final:
                self._run_batch(final, publish)
        except Exception as e:
            if self.device == "cpu" or not is_out_of_memory(e):
                raise
            self.to_cpu(f"the GPU ran out of memory ({type(e).__name__})")
            self._run_batch(final, publish)
        early = [r for r in batch if r.early]
        if early:
            # An early pass whose segment closed in the meantime (its final is in this batch) has nothing left to do.
            closed = {r.samples_key for r in final}
            self.prepare([r for r in early if r.samples_key not in closed])

    def prepare(self, early: list[Request]) -> None:
        """Steps 1-2 for early requests, kept in `ahead`. A failure is dropped: the final pass over
        the same samples does the work again and reports what goes wrong."""
        if not early:
            return
        try:
            t0 = time.perf_counter()
            encoded = self.encode(early)
            t_enc = (time.perf_counter() - t0) / len(early)
            for r, (frames, window) in zip(early, encoded):
                t1 = time.perf_counter()
                transcript = self.transcribe(r, window)
                self.ahead.put(r, Prepared(frames, transcript, t_enc + time.perf_counter() - t1))
        except Exception:
            return

    def _run_batch(self, batch: list[Request], publish) -> None:
        t0 = time.perf_counter()
        ready = [self.ahead.take(r) for r in batch]  # samples an early pass has already done
        fresh = iter(self.encode([r for r, p in zip(batch, ready) if p is None]))
        encoded = [(p.frames, None) if p is not None else next(fresh) for p in ready]
        audio = self.audio_frames(batch, encoded)
        t_enc = time.perf_counter() - t0
        with_vision = "vision" in self.ckpt.dims
        speakers = BatchSpeakers()
        samples = [Sample(-1, "", audio=self.standardize(a, speakers.heard_with(r.speaker, a)),
                          vision=r.vision if with_vision else None, face_posterior=r.face_posterior)
                   for a, r in zip(audio, batch)]
        t1 = time.perf_counter()
        probs = self.classify(samples)
        t_model = time.perf_counter() - t1
        for r, s, p in zip(batch, samples, probs):
            label, scores = self.scores(p)
            publish(r.provisional, Result(label, scores, _modalities(s), timings={"encode": t_enc, "model": t_model}))
        transcripts: list[Transcript | None] = []
        t2 = time.perf_counter()
        for r, (_, window), p in zip(batch, encoded, ready):
            try:
                transcripts.append(p.transcript if p is not None else self.transcribe(r, window))
            except Exception as e:  # one utterance that fails to decode fails alone, not its batch-mates
                if is_out_of_memory(e):
                    raise  # not this utterance's fault: the whole batch goes again on the CPU
                publish(r.final, e)
                transcripts.append(None)
        t_asr = time.perf_counter() - t2
        t3 = time.perf_counter()
        # The ASR's own confidence decides whether the words count (fdrl.asr_gate, as offline).
        dropped = [asr_gate.decide(tr, self.gate) if tr is not None else None for tr in transcripts]
        spoken = [i for i, tr in enumerate(transcripts) if tr is not None and dropped[i] is None]
        if self.text is not None and spoken:
            states = self.text.encode([[w.text for w in transcripts[i].words] for i in spoken],
                                      contexts=self.contexts([batch[i] for i in spoken], [transcripts[i].text for i in spoken]))
            for i, (st, word_ids) in zip(spoken, states):
                samples[i].text = self.recipe.text(st)
                samples[i].word_spans = self.recipe.word_spans([(w.start, w.end) for w in transcripts[i].words],
                                                               word_ids, len(audio[i]))
        # No words: a laugh or a sob keeps its voice label; noise (too little voice) is withdrawn.
        voice = [tr is not None and (dropped[i] != asr_gate.NO_WORDS or asr_gate.is_voice(r.audio, self.gate))
                 for i, (r, tr) in enumerate(zip(batch, transcripts))]
        # The final label counts the voiced batch-mates before it of the same stream (BatchSpeakers).
        for i, r in enumerate(batch):
            samples[i].audio = self.standardize(audio[i], speakers.heard_with(r.speaker, audio[i]))
            if voice[i]:  # only a voice shapes the speaker's statistics
                speakers.add(r.speaker, audio[i])
        probs = self.classify(samples)
        t_model += time.perf_counter() - t3
        for i, (r, s, p, tr) in enumerate(zip(batch, samples, probs, transcripts)):
            if tr is None:
                continue
            label, scores = self.scores(p)
            timings = {"encode": t_enc, "asr": t_asr, "model": t_model, "batch": float(len(batch))}
            if ready[i] is not None:
                timings["early"] = ready[i].seconds  # done during the hangover, before the segment closed
            publish(r.final, Result(label, scores, _modalities(s), tr.text, speech=voice[i], timings=timings,
                                    text_dropped=dropped[i]))
            if r.history is not None and dropped[i] is None:  # what later turns read as context: words that counted
                r.history.append(tr.text)
        speakers.commit()

    def contexts(self, requests: list[Request], texts: list[str]) -> list[tuple[str, ...]]:
        """Each request's context (`Recipe.context`, as offline) from its stream's transcripts so far,
        counting the batch's earlier turns of the same stream; the histories themselves grow only
        once the batch is done, so a batch run again on the CPU reads the same context."""
        said: dict[int, list[str]] = {}
        out = []
        for r, text in zip(requests, texts):
            if r.history is None:
                out.append(())
                continue
            earlier = said.setdefault(id(r.history), [])
            out.append(self.recipe.context([*r.history, *earlier]))
            earlier.append(text)
        return out


def is_out_of_memory(e: BaseException) -> bool:
    """torch's CUDA OOM, or CTranslate2's (a RuntimeError saying "out of memory")."""
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def _modalities(s: Sample) -> tuple[str, ...]:
    present = tuple(m for m in ("audio", "text", "vision") if getattr(s, m) is not None)
    return present + (("face",) if s.face_posterior is not None and "vision" not in present else ())


class InferenceWorker:
    """Micro-batches requests from every stream onto one compute thread."""

    def __init__(self, engine: Engine, max_batch: int, max_wait_ms: float) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._queue: asyncio.Queue[Request] = asyncio.Queue(maxsize=4 * max_batch)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fdrl-infer")
        self._task: asyncio.Task | None = None
        self.batches = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.engine.warmup)
        self._task = asyncio.create_task(self._loop(), name="fdrl-inference")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._executor.shutdown(wait=True, cancel_futures=True)

    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def submit(self, request: Request) -> Request:
        """Queue `request` (waiting while the worker is saturated) and return it with its futures set."""
        loop = asyncio.get_running_loop()
        request.provisional, request.final = loop.create_future(), loop.create_future()
        request.submitted = time.perf_counter()
        await self._queue.put(request)
        return request

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()

        def publish(fut: asyncio.Future, value) -> None:
            def settle() -> None:
                if not fut.done():
                    fut.set_exception(value) if isinstance(value, BaseException) else fut.set_result(value)
            loop.call_soon_threadsafe(settle)

        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time())))
                except asyncio.TimeoutError:
                    break
            started = time.perf_counter()
            for r in batch:
                r.queue_s = started - r.submitted
            try:
                await loop.run_in_executor(self._executor, self.engine.run_batch, batch, publish)
            except Exception as e:  # a failed batch fails its utterances, not the worker
                for r in batch:
                    if r.early:  # nobody waits for an early pass
                        continue
                    publish(r.provisional, e)
                    publish(r.final, e)
            self.batches += 1
