"""Performance benchmark of the streaming recognizer: every figure from one run, and every claimed
gain measured against the plain path in that same run, as a ratio.

    .venv/bin/python -m bench.run [--quick] [--out bench/results.json] [--checkpoint PATH]
                                  [--device cpu|cuda] [--streams N [--streams-pace realtime|fast]]
                                  [--audio-seconds S] [--cache-dir DIR] [--no-live]
                                  [--set SECTION.KEY=VALUE ...]

Output. Without `--out`, stdout holds the JSON report first and then the Markdown tables (read the
JSON part with `json.JSONDecoder().raw_decode(stdout)`); with `--out` the JSON goes to that file
and stdout holds only the tables. Progress lines go to stderr.

What it measures, in this order:

1. Test audio: espeak-ng sentences (1.5-3 s each, 0.7 s apart; 60 s, or 12 s with --quick), made
   once and cached under bench/.cache/.
2. Model load: `Engine()` (Whisper, MiniLM, checkpoint) and its warm-up, timed apart; later a whole
   `Recognizer.__aenter__` (files now in the OS cache).
3. Shared Whisper encoder pass (`Whisper.process`) against `encode()` + `transcribe()` without the
   encoder output, over the test audio's sentences.
4. The FDRL head alone at batch 1, 8, 32, 128 (audio 60 x 384 + text 12 x 384), on CPU and on
   CUDA when present: median latency after warm-up, utterances/s; batch 32 against batch 1.
5. Realtime-paced replay (`live=True`): per-stage times and latencies of the final labels
   (the `timings` of `Utterance` events), and of the provisional ones.
6. `--streams N`: N staggered replays sharing one Recognizer: compute latency and throughput
   (the GPU target, 64 realtime streams with p95 compute latency <= 300 ms: `--streams 64 --device cuda`).
7. Fast replay in multiples of real time, with the default config and with `runtime.max_batch=1`
   taking turns (median of 3 rounds, 1 with --quick).
8. Peak memory of this process (RSS; GPU when CUDA). It holds everything above at once (two
   recognizers during fast replay), so it overstates what a session needs; see 9.
9. Live sessions, each in a fresh process so no earlier section inflates its peak: the test audio
   recorded as a session (`stream.record`) with a 640x480 video track at the camera rate (10 fps,
   what `fdrl live` asks of a camera) showing a drawn face that OpenCV's Haar cascade detects, on a
   textured backdrop. One process replays the audio alone (face=False), the other audio and video
   (face=True, as `fdrl live` runs), both at realtime pace and then fast: peak RSS (VmHWM), end of
   speech -> final label, faces analysed and found. The audio + video process then times the face
   stage per frame: a frame with the face, the same scene without it, detection and the CNN apart,
   and detection at full size against the configured `face.detect_width`. --quick starts both
   processes at once and skips their fast replays; --no-live skips this section.
10. A short soak (`scripts/soak.py`, 6 minutes of speech, 2.5 with --quick, `--soak-minutes`) in a
   fresh process: RSS growth and slope after a 1-minute warm-up, with the torch build, CPU flags,
   allocator and bf16 setting it ran under.

Plain and optimized paths take turns wherever they can, so a neighbour's load skews both alike.
Timings mean something only on an otherwise idle machine; the report keeps the load average at
the start and the tables flag a busy machine. A full run takes about 7 minutes on 2 cores (plus
the length of the audio for realtime `--streams`); --quick about 50 s.
"""
from __future__ import annotations

import os

from stream import process

process.configure(reexec=False)  # as the `fdrl` command does, before torch is imported

import argparse
import asyncio
import copy
import dataclasses
import gc
import hashlib
import json
import math
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import av
import cv2
import numpy as np
import torch

from fdrl import config
from fdrl.audio import SAMPLE_RATE, decode_audio, write_wav
from fdrl.config import PROJECT_ROOT, Config
from fdrl.errors import UserError
from fdrl.face import FaceAnalyzer, crop_like_fer, pad_like_fer
from fdrl.inputs import Sample
from fdrl.model import FDRL
from fdrl.predict import cpu_bf16, predict_proba
from stream.events import Error, FaceUpdate, Stats, Utterance
from stream.inference import Engine
from stream.pipeline import Recognizer
from stream.record import SessionRecorder, load_session
from stream.sources import FileSource

DEFAULT_CACHE = PROJECT_ROOT / "bench" / ".cache"

# Sentences of 9-11 words (1.9-2.9 s at espeak-ng's default rate), no commas: one utterance each.
SENTENCES = (
    "I am very happy to see you again after all these years",
    "please open the window because it is warm in here",
    "the old dog is sitting quietly by the front door",
    "the sun is shining brightly over the hills today",
    "we are going to the market to buy fresh bread",
    "my younger brother plays the guitar every single evening",
    "could you tell me where the train station is",
    "I cannot believe that you did the same thing again",
    "the weekly meeting starts at ten tomorrow morning",
    "she left her keys on the kitchen table last night",
    "this is honestly the best day of my whole life",
    "I feel very tired after such a long trip home",
    "remember to turn off the lights before you leave",
    "he was really angry about the delay at the airport",
    "the children are playing happily in the back garden",
    "we should call our parents and tell them the news",
    "the coffee is far too hot to drink right now",
    "I think I lost my wallet on the crowded bus",
    "the movie was much longer than I had expected",
    "thank you so much for helping me with this problem",
)
VOICES = ("en-us", "en-gb")
LEAD_S, PAUSE_S, END_S = 0.5, 0.7, 1.0     # silence before the first, between and after the sentences
VOICED = 0.01                              # |sample| above this counts as voiced when trimming espeak's silence

HEAD_BATCHES = (1, 8, 32, 128)
HEAD_AUDIO_FRAMES, HEAD_TEXT_TOKENS, HEAD_WORDS = 60, 12, 5   # ~2.4 s at 25 Hz, a 10-word sentence's tokens
STAGES = ("encode", "asr", "model", "queue", "compute", "end_to_label")
GPU_TARGET = "64 concurrent realtime streams with p95 compute latency <= 300 ms"
SOAK_MINUTES, SOAK_MINUTES_QUICK = 6.0, 2.5   # section 10's speech (the first minute is warm-up)
RSS_TARGET_MIB = round(1.5e9 / 2**20, 1)   # "peak RSS <= 1.5 GB for live audio + video", read as 10^9 bytes (the stricter)

VIDEO_SIZE = (480, 640)     # height, width: a common webcam mode
CAMERA_FPS = 10.0           # `fdrl live` asks the camera for max(face.rate_hz, 10) frames a second


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- results ---------------------------------------------------------------------------------------


@dataclass
class Dist:
    """A latency distribution in milliseconds."""

    n: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    max_ms: float


def dist(seconds: Sequence[float]) -> Dist | None:
    """p50/p95 (linear interpolation), mean and max of durations given in seconds; None when empty."""
    if len(seconds) == 0:
        return None
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return Dist(len(ms), round(float(np.percentile(ms, 50)), 1), round(float(np.percentile(ms, 95)), 1),
                round(float(ms.mean()), 1), round(float(ms.max()), 1))


@dataclass
class Environment:
    cpu: str
    cores: int                 # os.cpu_count()
    usable_cores: int          # this process's affinity (a container's share)
    gpu: str | None
    device: str                # where Whisper and FDRL ran
    python: str
    versions: dict[str, str]
    torch_threads: int
    whisper_threads: int
    whisper_compute_type: str  # what CTranslate2 actually uses
    loadavg_start: list[float]
    busy: bool                 # load average above 0.5 at the start: timings are contaminated


@dataclass
class TestAudio:
    path: str
    duration_s: float
    spans: list[list[float]]   # [start, end] seconds of each spoken sentence
    sentences: list[str]


@dataclass
class LoadTimes:
    engine_s: float            # Engine(): Whisper + MiniLM + checkpoint, the first load in this process
    warmup_s: float            # Engine.warmup(): one utterance of noise end to end
    recognizer_enter_s: float  # a later Recognizer.__aenter__ (Engine + warm-up again, files in the OS cache)
    rss_after_load_mib: float


@dataclass
class HeadPoint:
    device: str
    batch: int
    latency_ms: float          # median of the runs: collate + forward + softmax, back on the CPU
    utterances_per_s: float


@dataclass
class Gain:
    """A claimed speed-up, timed against the plain path in the same run."""

    name: str
    plain: str
    optimized: str
    plain_s: float
    optimized_s: float
    ratio: float               # plain_s / optimized_s: above 1 the optimization pays
    note: str = ""


@dataclass
class RealtimeReplay:
    audio_s: float
    wall_s: float
    utterances: int            # final labels
    errors: int
    stages: dict[str, Dist | None]       # final labels' timings; encode/asr/model are per batch
    provisional_compute: Dist | None     # segment closed -> provisional label
    provisional_end_to_label: Dist | None


@dataclass
class FastReplay:
    max_batch: int
    audio_s: float
    wall_s: float
    x_realtime: float          # audio seconds per wall second, models already loaded
    utterances: int
    mean_batch: float          # size of the batch each final label was computed in, averaged over them


@dataclass
class StreamsRun:
    streams: int
    pace: str
    audio_s: float             # over all streams
    wall_s: float
    x_realtime: float
    utterances: int
    utterances_per_s: float
    errors: int
    mean_batch: float          # as in FastReplay
    compute: Dist | None
    end_to_label: Dist | None  # realtime pace only
    provisional_compute: Dist | None
    target: str
    meets_target: bool | None  # only judged with >= 64 streams at realtime pace


@dataclass
class Memory:
    peak_rss_mib: float                  # getrusage ru_maxrss (at least the launching process's peak: see LiveRun)
    vm_hwm_mib: float | None             # /proc/self/status VmHWM: this process's own peak
    gpu_peak_allocated_mib: float | None  # torch's allocator only: CTranslate2's CUDA memory is not in it
    gpu_used_mib: float | None           # the whole device at the end (includes CTranslate2), cudaMemGetInfo


@dataclass
class FaceCost:
    """The face stage on one 640x480 frame: medians of interleaved runs, in milliseconds."""

    frame: str
    face_found: bool           # the drawn face is detected, so analyze_face_ms includes the CNN
    analyze_face_ms: float     # FaceAnalyzer.analyze on the frame with the face: detection, crop, CNN
    analyze_no_face_ms: float  # the same backdrop without the face: detection finds nothing
    detect_ms: float           # Haar detection alone, on the frame with the face
    classify_ms: float         # mini-Xception on one 64x64 crop
    detect_full_ms: float      # detection at full resolution (face.detect_width = 0): the plain path
    full_finds_face: bool
    rate_hz: float             # face.rate_hz: frames analysed per second
    core_share: float          # analyze_face_ms x rate_hz: the fraction of one core the face stage takes
    torch_threads: int
    opencv_threads: int


@dataclass
class LiveRun:
    """One session in a fresh process: a realtime replay as `fdrl live` would run it, then a fast one."""

    video: bool                # audio + video with face analysis on, or audio alone
    audio_s: float
    wall_s: float
    utterances: int
    errors: int
    end_to_label: Dist | None
    compute: Dist | None
    video_frames: int          # frames in the video track (CAMERA_FPS)
    face_frames: int           # frames analysed (face.rate_hz) in the realtime replay
    faces_found: int
    frames_dropped: int        # frames the pipeline dropped because the face stage fell behind
    rss_after_load_mib: float
    # VmHWM right after the realtime replay: the live session's peak. Not getrusage's ru_maxrss, which
    # Linux carries over fork + exec, so a child starts with its parent's peak.
    peak_rss_mib: float
    gpu_peak_allocated_mib: float | None   # as in Memory
    gpu_used_mib: float | None
    fast_x_realtime: float | None          # None: no fast replay (--quick)
    fast_utterances: int | None
    peak_rss_after_fast_mib: float | None  # VmHWM once the fast replay has run too
    face: FaceCost | None      # audio + video only


@dataclass
class Live:
    audio_only: LiveRun
    audio_video: LiveRun
    rss_target_mib: float
    meets_rss_target: bool     # the audio + video peak of the realtime replay is within the target
    rss_ratio: float           # audio + video peak / audio-only peak


@dataclass
class Report:
    command: str
    environment: Environment
    audio: TestAudio
    load: LoadTimes
    realtime: RealtimeReplay
    fast: FastReplay
    fast_batch1: FastReplay
    head: list[HeadPoint]
    gains: list[Gain]
    streams: StreamsRun | None
    memory: Memory
    live: Live | None
    bench_wall_s: float
    soak: dict | None = None           # section 10: scripts/soak.py's report (SoakReport as a dict)


# -- 1. test audio ---------------------------------------------------------------------------------


def synthesize(text: str, voice: str) -> np.ndarray:
    """`text` spoken by espeak-ng, 16 kHz mono float32, with espeak's leading and trailing silence cut."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "say.wav"
        try:
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
        except FileNotFoundError:
            raise UserError("espeak-ng is needed to make the benchmark audio: sudo apt-get install espeak-ng") from None
        audio = decode_audio(raw)
    voiced = np.flatnonzero(np.abs(audio) > VOICED)
    return audio[voiced[0]:voiced[-1] + 1]


def _espeak_version() -> str:
    try:
        return subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        raise UserError("espeak-ng is needed to make the benchmark audio: sudo apt-get install espeak-ng") from None


def make_speech(seconds: float, cache_dir: Path) -> TestAudio:
    """Sentences one after another (voices alternating) until `seconds` of speech and pauses; cached."""
    recipe = [SENTENCES, VOICES, LEAD_S, PAUSE_S, END_S, seconds, _espeak_version()]
    key = hashlib.blake2b(json.dumps(recipe).encode(), digest_size=6).hexdigest()
    wav, meta = cache_dir / f"speech-{key}.wav", cache_dir / f"speech-{key}.json"
    if wav.is_file() and meta.is_file():
        return TestAudio(**json.loads(meta.read_text()))
    parts = [np.zeros(round(LEAD_S * SAMPLE_RATE), np.float32)]
    spans, sentences, t, k = [], [], LEAD_S, 0
    while t - LEAD_S < seconds:
        text = SENTENCES[k % len(SENTENCES)]
        audio = synthesize(text, VOICES[(k + k // len(SENTENCES)) % len(VOICES)])  # each round swaps voices
        spans.append([round(t, 3), round(t + len(audio) / SAMPLE_RATE, 3)])
        sentences.append(text)
        parts += [audio, np.zeros(round(PAUSE_S * SAMPLE_RATE), np.float32)]
        t += len(audio) / SAMPLE_RATE + PAUSE_S
        k += 1
    parts.append(np.zeros(round((END_S - PAUSE_S) * SAMPLE_RATE), np.float32))
    samples = np.concatenate(parts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_wav(wav, samples)
    result = TestAudio(str(wav), round(len(samples) / SAMPLE_RATE, 3), spans, sentences)
    meta.write_text(json.dumps(dataclasses.asdict(result)))
    return result


def utterance_clips(audio: TestAudio, cfg: Config) -> list[np.ndarray]:
    """Each sentence cut out as the VAD would cut it: with its pre-roll before and a short tail after."""
    samples = decode_audio(audio.path)
    before, after = cfg.vad.preroll_ms / 1000, cfg.vad.tail_ms / 1000
    return [samples[max(0, round((s - before) * SAMPLE_RATE)):round((e + after) * SAMPLE_RATE)] for s, e in audio.spans]


def backdrop(size: tuple[int, int] = VIDEO_SIZE, seed: int = 0) -> np.ndarray:
    """A gray textured scene (smoothed coarse noise). Haar detection's cost depends on texture: it
    rejects a blank frame about 15 times faster than this, so blank frames would flatter the face stage."""
    noise = np.random.default_rng(seed).integers(0, 256, (size[0] // 8, size[1] // 8), dtype=np.uint8)
    texture = cv2.resize(noise, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    return cv2.addWeighted(texture, 0.5, np.full(size, 60, np.uint8), 0.5, 0)


def drawn_face(scene: np.ndarray, t: float) -> np.ndarray:
    """A BGR frame: the drawn face of tests/test_face.py (which the Haar cascade detects) on `scene`,
    swaying sideways and opening its mouth as if talking, so the video changes from frame to frame."""
    img = scene.copy()
    cx, cy = img.shape[1] // 2 + round(12 * math.sin(2 * math.pi * 0.3 * t)), img.shape[0] // 2
    cv2.ellipse(img, (cx, cy), (80, 105), 0, 0, 360, 200, -1)
    for dx in (-32, 32):
        cv2.ellipse(img, (cx + dx, cy - 25), (18, 9), 0, 0, 360, 40, -1)
        cv2.line(img, (cx + dx - 20, cy - 45), (cx + dx + 20, cy - 45), 60, 5)
    cv2.ellipse(img, (cx, cy + 15), (9, 22), 0, 0, 360, 170, -1)
    cv2.ellipse(img, (cx, cy + 55), (30, 6 + round(6 * abs(math.sin(2 * math.pi * 2 * t)))), 0, 0, 360, 70, -1)
    return cv2.cvtColor(cv2.GaussianBlur(img, (0, 0), 3), cv2.COLOR_GRAY2BGR)


def no_face(scene: np.ndarray) -> np.ndarray:
    """The scene as `drawn_face` renders it, without the face."""
    return cv2.cvtColor(cv2.GaussianBlur(scene, (0, 0), 3), cv2.COLOR_GRAY2BGR)


def make_session(audio: TestAudio, cache_dir: Path) -> Path:
    """The test audio recorded as a session (audio.wav + video.mp4 at CAMERA_FPS, as `fdrl live --record`
    writes one) with `drawn_face` in every frame; cached next to the audio."""
    recipe = [Path(audio.path).name, VIDEO_SIZE, CAMERA_FPS, av.__version__, "drawn_face v1"]
    folder = cache_dir / f"session-{hashlib.blake2b(json.dumps(recipe).encode(), digest_size=6).hexdigest()}"
    try:
        if load_session(folder).meta.get("complete"):
            return folder
    except UserError:
        pass  # not made yet, or an earlier attempt was interrupted
    shutil.rmtree(folder, ignore_errors=True)
    samples, scene = decode_audio(audio.path), backdrop()
    chunk = SAMPLE_RATE // 10
    with SessionRecorder(folder, video_fps=CAMERA_FPS) as recorder:
        for start in range(0, len(samples), chunk):
            recorder.write_audio(start / SAMPLE_RATE, samples[start:start + chunk])
        for k in range(int(audio.duration_s * CAMERA_FPS)):
            recorder.write_frame(k / CAMERA_FPS, drawn_face(scene, k / CAMERA_FPS))
    return folder


# -- 2. environment and model load -----------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(engine: Engine, loadavg: Sequence[float]) -> Environment:
    cores = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    ct2 = engine.whisper.model.model
    return Environment(
        cpu=_cpu_model(), cores=cores, usable_cores=usable,
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        device=engine.device, python=platform.python_version(),
        versions={p: _version(p) for p in ("torch", "ctranslate2", "faster-whisper", "numpy", "opencv-python-headless", "av")},
        torch_threads=torch.get_num_threads(),
        whisper_threads=engine.cfg.encoders.whisper_threads or usable,
        whisper_compute_type=str(getattr(ct2, "compute_type", engine.whisper.compute_type)),
        loadavg_start=[round(x, 2) for x in loadavg], busy=loadavg[0] > 0.5,
    )


def _status_mib(field: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def measure_load(cfg: Config, checkpoint: Path, device: str | None) -> tuple[Engine, float, float]:
    """The engine, the seconds its construction took and the seconds of its warm-up."""
    t0 = time.perf_counter()
    engine = Engine(cfg, checkpoint, device)
    t1 = time.perf_counter()
    engine.warmup()
    return engine, t1 - t0, time.perf_counter() - t1


# -- 3. shared Whisper encoder pass ----------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call, and its result."""
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def gain_shared_encoder(whisper, clips: list[np.ndarray], repeats: int) -> Gain:
    """`process()` (one encoder pass feeds frames and decoding) against `encode()` then `transcribe()`,
    which runs the encoder a second time inside faster-whisper. The two alternate, so a neighbour's
    load skews both alike."""
    def plain() -> list[str]:
        whisper.encode(clips)
        return [whisper.transcribe(a).text for a in clips]

    def shared() -> list[str]:
        return [t.text for _, t in whisper.process(clips)]

    whisper.process(clips[:1])  # warm both paths on one clip
    whisper.transcribe(clips[0])
    plain_times, shared_times = [], []
    for _ in range(repeats):
        seconds, plain_text = _timed(plain)
        plain_times.append(seconds)
        seconds, shared_text = _timed(shared)
        shared_times.append(seconds)
    plain_s, shared_s = float(np.median(plain_times)), float(np.median(shared_times))
    same = sum(a == b for a, b in zip(plain_text, shared_text))
    # With a lower layer the decoder reads the torch port's float32 output, not CTranslate2's int8 one.
    port = "; the decoder reads the torch port's float32 encoder output" if whisper.layer else ""
    return Gain("shared Whisper encoder pass", "encode() + transcribe(audio)", "process()", round(plain_s, 3),
                round(shared_s, 3), round(plain_s / shared_s, 3),
                f"{len(clips)} utterances, median of {repeats}; identical transcripts {same}/{len(clips)}{port}")


# -- 4. FDRL head ----------------------------------------------------------------------------------


def head_samples(dims: dict[str, int], n: int, seed: int = 0, audio_frames: int = HEAD_AUDIO_FRAMES) -> list[Sample]:
    """`n` utterances of realistic size for the modalities the model reads (audio and text; no vision)."""
    rng = np.random.default_rng(seed)
    spans = np.array([(12 * w, 12 * w + 12, 1 + 2 * w, 3 + 2 * w) for w in range(HEAD_WORDS)], np.int32)

    def feats(modality: str, length: int) -> np.ndarray | None:
        return rng.standard_normal((length, dims[modality])).astype(np.float32) if modality in dims else None

    return [Sample(-1, "", audio=feats("audio", audio_frames), text=feats("text", HEAD_TEXT_TOKENS),
                   word_spans=spans) for _ in range(n)]


def bench_head(model: FDRL, runs: int, warmup: int = 3) -> list[HeadPoint]:
    """Median latency per batch size and device; the batch sizes take turns run by run, so a
    neighbour's load skews them alike."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    points = []
    for device in devices:
        local = copy.deepcopy(model).to(device).eval()
        samples = {b: head_samples(model.dims, b) for b in HEAD_BATCHES}
        times: dict[int, list[float]] = {b: [] for b in HEAD_BATCHES}
        for i in range(warmup + runs):
            for b in HEAD_BATCHES:
                seconds, _ = _timed(lambda: predict_proba(local, samples[b]))  # what the worker runs per batch
                if i >= warmup:
                    times[b].append(seconds)
        for b in HEAD_BATCHES:
            seconds = float(np.median(times[b]))
            points.append(HeadPoint(device, b, round(seconds * 1000, 3), round(b / seconds, 1)))
    return points


def gains_head(points: list[HeadPoint], batch: int = 32) -> list[Gain]:
    """Batch `batch` against `batch` separate batch-1 calls, per device."""
    out = []
    for device in dict.fromkeys(p.device for p in points):
        one = next(p for p in points if p.device == device and p.batch == 1)
        many = next(p for p in points if p.device == device and p.batch == batch)
        plain_s, batched_s = batch * one.latency_ms / 1000, many.latency_ms / 1000
        out.append(Gain(f"batched FDRL head ({device})", f"{batch} x batch 1", f"1 x batch {batch}",
                        round(plain_s, 5), round(batched_s, 5), round(plain_s / batched_s, 3),
                        f"{batch} utterances, medians of interleaved runs"))
    return out


def gain_bf16(model: FDRL, runs: int, batch: int = 8) -> Gain:
    """The head on the CPU in float32 against bf16 autocast (`runtime.cpu_bf16`), interleaved, each run
    on utterances of a length not seen before, as live: oneDNN builds bf16 kernels for every new
    shape, and a session's utterance lengths never stop changing. The note says how far the
    posteriors move, whether this CPU has native bf16, and whether the config uses it."""
    local = copy.deepcopy(model).to("cpu").eval()
    seconds: dict[bool, list[float]] = {False: [], True: []}
    drift = 0.0
    for i in range(runs):
        samples = head_samples(model.dims, batch, seed=i, audio_frames=HEAD_AUDIO_FRAMES + 7 * i)
        probs = {}
        for bf16 in (False, True):
            seconds[bf16].append(_timed(lambda: probs.setdefault(bf16, predict_proba(local, samples, bf16=bf16)))[0])
        drift = max(drift, float(np.abs(probs[False] - probs[True]).max()))
    plain, fast = float(np.median(seconds[False])), float(np.median(seconds[True]))
    native = "native bf16 on this CPU" if cpu_bf16() else "bf16 emulated on this CPU (no AVX512-BF16/AMX)"
    return Gain("bf16 autocast, FDRL head (cpu)", f"float32, batch {batch}", f"bf16, batch {batch}", round(plain, 5),
                round(fast, 5), round(plain / fast, 3),
                f"a new utterance length each run; max posterior change {drift:.4f}; {native}; runtime.cpu_bf16 decides")


# -- 5-7. the pipeline -----------------------------------------------------------------------------


@dataclass
class Played:
    """What one replayed stream produced."""

    finals: list[Utterance]
    provisionals: list[Utterance]
    errors: int
    wall_s: float
    faces: list[FaceUpdate]        # one per analysed frame; label None when no face was found
    frames_dropped: int            # from the last Stats event


async def replay(rec: Recognizer, source: FileSource, live: bool, stream: str = "0", delay_s: float = 0.0) -> Played:
    await asyncio.sleep(delay_s)
    played = Played([], [], 0, 0.0, [], 0)
    t0 = time.perf_counter()
    async for event in rec.run(source, stream=stream, live=live):  # type: ignore[arg-type]
        if isinstance(event, Utterance):
            (played.finals if event.final else played.provisionals).append(event)
        elif isinstance(event, Error):
            played.errors += 1
        elif isinstance(event, FaceUpdate):
            played.faces.append(event)
        elif isinstance(event, Stats):
            played.frames_dropped = event.frames_dropped
    played.wall_s = time.perf_counter() - t0
    return played


def _timing(utterances: list[Utterance], key: str) -> Dist | None:
    return dist([u.timings[key] for u in utterances if key in u.timings])


def mean_batch(finals: list[Utterance]) -> float:
    """Mean size of the worker batch each final label came from (the worker writes it in `timings`)."""
    sizes = [u.timings["batch"] for u in finals if "batch" in u.timings]
    return round(float(np.mean(sizes)), 2) if sizes else 0.0


async def measure_realtime(rec: Recognizer, audio: TestAudio) -> RealtimeReplay:
    played = await replay(rec, FileSource(audio.path, pace="realtime"), live=True)
    return RealtimeReplay(audio.duration_s, round(played.wall_s, 3), len(played.finals), played.errors,
                          {k: _timing(played.finals, k) for k in STAGES},
                          _timing(played.provisionals, "compute"), _timing(played.provisionals, "end_to_label"))


async def measure_fast(rec: Recognizer, audio: TestAudio) -> FastReplay:
    played = await replay(rec, FileSource(audio.path, pace="fast"), live=False)
    return FastReplay(rec.cfg.runtime.max_batch, audio.duration_s, round(played.wall_s, 3),
                      round(audio.duration_s / played.wall_s, 2), len(played.finals), mean_batch(played.finals))


async def measure_fast_pair(rec: Recognizer, rec_batch1: Recognizer, audio: TestAudio,
                            rounds: int) -> tuple[FastReplay, FastReplay]:
    """Fast replays on the two recognizers taking turns; for each, the run of median wall time."""
    runs: tuple[list[FastReplay], list[FastReplay]] = ([], [])
    for _ in range(rounds):
        runs[0].append(await measure_fast(rec, audio))
        runs[1].append(await measure_fast(rec_batch1, audio))
    median = [sorted(r, key=lambda f: f.wall_s)[len(r) // 2] for r in runs]
    return median[0], median[1]


async def measure_streams(rec: Recognizer, audio: TestAudio, n: int, pace: str) -> StreamsRun:
    """`n` replays of the test audio at once on one Recognizer. Realtime streams start spread evenly over
    one sentence period, so their segments close spread out in time, as independent talkers' would,
    instead of all at once."""
    live = pace == "realtime"
    period = audio.duration_s / len(audio.spans)
    t0 = time.perf_counter()
    played = await asyncio.gather(*(replay(rec, FileSource(audio.path, pace=pace), live, str(i),  # type: ignore[arg-type]
                                           period * i / n if live else 0.0) for i in range(n)))
    wall = time.perf_counter() - t0
    finals = [u for p in played for u in p.finals]
    provisionals = [u for p in played for u in p.provisionals]
    compute = _timing(finals, "compute")
    meets = compute.p95_ms <= 300 if (compute and live and n >= 64) else None
    return StreamsRun(n, pace, round(n * audio.duration_s, 3), round(wall, 3), round(n * audio.duration_s / wall, 2),
                      len(finals), round(len(finals) / wall, 2), sum(p.errors for p in played), mean_batch(finals), compute,
                      _timing(finals, "end_to_label"), _timing(provisionals, "compute"), GPU_TARGET, meets)


@dataclass
class PipelineResults:
    enter_s: float
    realtime: RealtimeReplay
    fast: FastReplay
    fast_batch1: FastReplay
    streams: StreamsRun | None


async def measure_pipeline(cfg: Config, cfg_batch1: Config, checkpoint: Path, device: str | None,
                           audio: TestAudio, streams: int, streams_pace: str, rounds: int) -> PipelineResults:
    rec = Recognizer(cfg, checkpoint, device, face=False)
    t0 = time.perf_counter()
    async with rec:
        enter_s = time.perf_counter() - t0
        log(f"realtime replay of {audio.duration_s:.0f} s")
        realtime = await measure_realtime(rec, audio)
        streams_run = None
        if streams > 0:
            log(f"{streams} concurrent streams, {streams_pace} pace")
            streams_run = await measure_streams(rec, audio, streams, streams_pace)
        async with Recognizer(cfg_batch1, checkpoint, device, face=False) as rec1:
            log(f"fast replay, default config and runtime.max_batch=1, {rounds} round(s)")
            fast, fast1 = await measure_fast_pair(rec, rec1, audio, rounds)
    return PipelineResults(round(enter_s, 3), realtime, fast, fast1, streams_run)


def gain_fast_batching(default: FastReplay, batch1: FastReplay) -> Gain:
    return Gain("micro-batching (fast replay)", "runtime.max_batch=1", f"runtime.max_batch={default.max_batch}",
                batch1.wall_s, default.wall_s, round(batch1.wall_s / default.wall_s, 3),
                f"{default.audio_s:.0f} s of audio, median round; mean batch {default.mean_batch} vs {batch1.mean_batch}")


# -- 8. memory -------------------------------------------------------------------------------------


def memory() -> Memory:
    gpu_peak = gpu_used = None
    if torch.cuda.is_available():
        gpu_peak = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        free, total = torch.cuda.mem_get_info()
        gpu_used = round((total - free) / 2**20, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return Memory(round(peak, 1), _status_mib("VmHWM"), gpu_peak, gpu_used)


# -- 9. live sessions, each in a fresh process -----------------------------------------------------


@dataclass
class ChildSpec:
    """What the bench asks of one live-session process (JSON on that process's command line)."""

    session: str               # a recorded session folder (make_session)
    video: bool                # replay its video with face analysis on, or its audio alone
    checkpoint: str
    device: str | None
    overrides: list[str]
    fast: bool                 # also a fast replay after the realtime one (not with --quick)
    runs: int                  # timed runs of each face-stage variant


def _median_ms(fns: dict[str, Callable[[], Any]], runs: int, warmup: int = 1) -> dict[str, float]:
    """Median milliseconds of each function; they take turns run by run, so a neighbour's load skews them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + runs):
        for name, fn in fns.items():
            seconds, _ = _timed(fn)
            if i >= warmup:
                times[name].append(seconds)
    return {name: round(float(np.median(t)) * 1000, 2) for name, t in times.items()}


def face_cost(cfg: Config, runs: int) -> FaceCost:
    """The face stage on a frame where the drawn face is found and on the same scene without it, with
    detection and the CNN apart; and detection at full resolution, the plain path `face.detect_width` avoids."""
    weights = cfg.resolve(cfg.paths.face_weights)
    analyzer = FaceAnalyzer.from_config(cfg, "cpu")                          # as the Recognizer builds it
    full_size = FaceAnalyzer(weights, "cpu", cfg.face.min_face_px, detect_width=0)
    scene = backdrop()
    with_face, without = drawn_face(scene, 0.0), no_face(scene)
    gray = cv2.cvtColor(with_face, cv2.COLOR_BGR2GRAY)
    boxes = analyzer.detect(gray)
    crop = crop_like_fer(pad_like_fer(gray), boxes[0])[None] if boxes else np.zeros((1, 64, 64), np.float32)
    ms = _median_ms({"face": lambda: analyzer.analyze(with_face), "no_face": lambda: analyzer.analyze(without),
                     "detect": lambda: analyzer.detect(gray), "classify": lambda: analyzer.classify(crop),
                     "full": lambda: full_size.detect(gray)}, runs)
    return FaceCost(f"{VIDEO_SIZE[1]}x{VIDEO_SIZE[0]}", analyzer.analyze(with_face) is not None, ms["face"], ms["no_face"],
                    ms["detect"], ms["classify"], ms["full"], bool(full_size.detect(gray)), cfg.face.rate_hz,
                    round(ms["face"] / 1000 * cfg.face.rate_hz, 3), torch.get_num_threads(), cv2.getNumThreads())


async def live_session(spec: ChildSpec) -> LiveRun:
    """In the fresh process: a realtime replay, the peak memory it left, then a fast replay and (with
    video) the face-stage timings, which come after the peak is read and so cannot inflate it."""
    cfg = config.load(overrides=spec.overrides)
    session = load_session(spec.session)
    video = session.video if spec.video else None
    async with Recognizer(cfg, Path(spec.checkpoint), spec.device, face=spec.video) as rec:
        rss_loaded = _status_mib("VmRSS") or 0.0
        log(f"live session ({'audio + video' if spec.video else 'audio only'}): realtime replay")
        live = await replay(rec, FileSource(session.audio, video, pace="realtime"), live=True)
        mem = memory()
        fast = None
        if spec.fast:
            log("then a fast replay")
            fast = await replay(rec, FileSource(session.audio, video, pace="fast"), live=False)
    face = face_cost(cfg, spec.runs) if spec.video else None
    audio_s = float(session.meta["audio_s"])
    return LiveRun(spec.video, audio_s, round(live.wall_s, 3), len(live.finals), live.errors,
                   _timing(live.finals, "end_to_label"), _timing(live.finals, "compute"),
                   int(session.meta["video_frames"]) if spec.video else 0, len(live.faces),
                   sum(f.label is not None for f in live.faces), live.frames_dropped, rss_loaded,
                   mem.vm_hwm_mib or mem.peak_rss_mib, mem.gpu_peak_allocated_mib, mem.gpu_used_mib,
                   round(audio_s / fast.wall_s, 2) if fast else None, len(fast.finals) if fast else None,
                   _status_mib("VmHWM") if fast else None, face)


def _live_run(d: dict[str, Any]) -> LiveRun:
    """A LiveRun back from its JSON form."""
    nested = {k: Dist(**d[k]) if d[k] else None for k in ("end_to_label", "compute")}
    return LiveRun(**{**d, **nested, "face": FaceCost(**d["face"]) if d["face"] else None})


def start_live(spec: ChildSpec) -> subprocess.Popen:
    """`live_session` in a fresh Python process, so its VmHWM is the session's own; its stderr is ours."""
    return subprocess.Popen([sys.executable, "-m", "bench.run", "--child", json.dumps(dataclasses.asdict(spec))],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)


def finish_live(proc: subprocess.Popen) -> LiveRun:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"a live-session process exited with {proc.returncode}; its error is above")
    return _live_run(json.loads(out.strip().splitlines()[-1]))


def measure_live(session: Path, checkpoint: Path, device: str | None, overrides: list[str], quick: bool) -> Live:
    """The same session replayed by two fresh processes, audio alone then audio + video. A quick run
    starts both at once: their timings then contend, but each process's memory is still its own."""
    specs = [ChildSpec(str(session), video, str(checkpoint), device, overrides, fast=not quick, runs=3 if quick else 20)
             for video in (False, True)]
    if quick:
        procs = [start_live(spec) for spec in specs]
        audio_only, audio_video = (finish_live(proc) for proc in procs)
    else:
        audio_only, audio_video = (finish_live(start_live(spec)) for spec in specs)
    return Live(audio_only, audio_video, RSS_TARGET_MIB, audio_video.peak_rss_mib <= RSS_TARGET_MIB,
                round(audio_video.peak_rss_mib / audio_only.peak_rss_mib, 3))


def gain_detect_width(face: FaceCost, detect_width: int) -> Gain:
    note = "both find the face" if face.face_found and face.full_finds_face else "the two disagree on the face"
    return Gain("Haar detection on a smaller copy", f"{face.frame} frame", f"face.detect_width = {detect_width}",
                round(face.detect_full_ms / 1000, 5), round(face.detect_ms / 1000, 5),
                round(face.detect_full_ms / face.detect_ms, 3), note)


# -- the report ------------------------------------------------------------------------------------


def _ms(d: Dist | None, key: str) -> str:
    return "n/a" if d is None else f"{getattr(d, key):.0f} ms"


def to_markdown(r: Report) -> str:
    e = r.environment
    gpu = f", GPU {e.gpu}" if e.gpu else ""
    lines = [f"## fdrl-stream benchmark: {e.cpu} ({e.usable_cores}/{e.cores} cores{gpu}), device {e.device}",
             "",
             f"torch {e.versions['torch']} ({e.torch_threads} threads), ctranslate2 {e.versions['ctranslate2']}, "
             f"faster-whisper {e.versions['faster-whisper']}, numpy {e.versions['numpy']}, "
             f"OpenCV {e.versions['opencv-python-headless']}, PyAV {e.versions['av']}; "
             f"Whisper compute type {e.whisper_compute_type}, {e.whisper_threads} threads. "
             f"Test audio {r.audio.duration_s:.0f} s, {len(r.audio.spans)} sentences.", ""]
    if e.busy:
        lines += [f"> **Machine busy at the start (load {e.loadavg_start[0]}): timings are contaminated; "
                  "re-run on an idle machine.**", ""]

    rt = r.realtime
    lines += ["| latency (realtime replay) | p50 | p95 | n |", "|---|---:|---:|---:|"]
    names = {"encode": "Whisper encode (per batch)", "asr": "Whisper decode (per batch)",
             "model": "FDRL + MiniLM (per batch)", "queue": "wait for the worker",
             "compute": "segment closed → final label", "end_to_label": "end of speech → final label"}
    rows = [(names[k], rt.stages[k]) for k in STAGES]
    rows += [("segment closed → provisional label", rt.provisional_compute),
             ("end of speech → provisional label", rt.provisional_end_to_label)]
    if r.streams:
        s = r.streams
        rows += [(f"{s.streams} streams ({s.pace}): segment closed → final label", s.compute),
                 (f"{s.streams} streams ({s.pace}): segment closed → provisional label", s.provisional_compute)]
        if s.end_to_label:
            rows.append((f"{s.streams} streams ({s.pace}): end of speech → final label", s.end_to_label))
    lines += [f"| {name} | {_ms(d, 'p50_ms')} | {_ms(d, 'p95_ms')} | {d.n if d else 0} |" for name, d in rows]

    lines += ["", "| throughput and cost | value |", "|---|---:|"]
    for f in (r.fast, r.fast_batch1):
        lines.append(f"| fast replay, max_batch={f.max_batch} | {f.x_realtime:.2f}× realtime (mean batch {f.mean_batch}) |")
    if r.streams:
        s = r.streams
        target = "" if s.meets_target is None else (" — meets the GPU target" if s.meets_target else " — misses the GPU target")
        lines.append(f"| {s.streams} streams ({s.pace}) | {s.x_realtime:.2f}× realtime, {s.utterances_per_s} utterances/s{target} |")
    m = r.memory
    lines += [f"| model load: Engine() | {r.load.engine_s:.2f} s |",
              f"| warm-up: Engine.warmup() | {r.load.warmup_s:.2f} s |",
              f"| Recognizer.__aenter__ (warm files) | {r.load.recognizer_enter_s:.2f} s |",
              (f"| RSS after load / peak RSS (this process) | {r.load.rss_after_load_mib:.0f} / "
               f"{m.vm_hwm_mib or m.peak_rss_mib:.0f} MiB |")]
    if m.gpu_peak_allocated_mib is not None:
        lines.append(f"| GPU peak (torch) / device used at end | {m.gpu_peak_allocated_mib:.0f} / {m.gpu_used_mib:.0f} MiB |")

    if r.live:
        lines += ["", *live_table(r.live)]

    lines += ["", "| FDRL head | batch | latency (median) | utterances/s |", "|---|---:|---:|---:|"]
    lines += [f"| {p.device} | {p.batch} | {p.latency_ms:.2f} ms | {p.utterances_per_s:,.0f} |" for p in r.head]

    lines += ["", "| claimed gain | plain | optimized | plain / optimized | what |", "|---|---:|---:|---:|---|"]
    lines += [f"| {g.name} | {g.plain}: {_seconds(g.plain_s)} | {g.optimized}: {_seconds(g.optimized_s)} | "
              f"**{g.ratio:.2f}×** | {g.note} |" for g in r.gains]
    if r.soak:
        s, setup = r.soak, r.soak["setup"]
        lines += ["", "| short soak (fresh process, fast replay) | value |", "|---|---:|",
                  f"| speech / wall | {s['minutes']:g} min / {s['wall_s']:.0f} s |",
                  f"| RSS after warm-up → end (growth) | {s['rss_warm_mb']:.0f} → {s['rss_end_mb']:.0f} MB "
                  f"({s['growth_mb']:+.0f} MB) |",
                  f"| slope after warm-up | {s['slope_mb_per_h']:+.0f} MB/h |",
                  f"| setup | torch {setup['torch']}, {s['allocator']}, bf16 autocast {'on' if setup['cpu_bf16'] else 'off'} "
                  f"(CPU: AVX512-BF16 {setup['avx512_bf16']}, AMX {setup['amx']}) |"]
    lines += ["", f"Reproduce: `{r.command}` (this run took {r.bench_wall_s:.0f} s)."]
    return "\n".join(lines)


def live_table(live: Live) -> list[str]:
    """Audio alone against audio + video, each a fresh process replaying the same session."""
    a, v = live.audio_only, live.audio_video
    verdict = "within" if live.meets_rss_target else "**over**"

    def p50_p95(d: Dist | None) -> str:
        return f"{_ms(d, 'p50_ms')} / {_ms(d, 'p95_ms')}"

    def peak_fast(r: LiveRun) -> str:
        return f"{r.peak_rss_after_fast_mib:.0f} MiB"

    rows = [("peak RSS, realtime replay (VmHWM)", f"{a.peak_rss_mib:.0f} MiB",
             f"{v.peak_rss_mib:.0f} MiB ({live.rss_ratio:.2f}×; {verdict} the {live.rss_target_mib:.0f} MiB target)"),
            ("RSS after load", f"{a.rss_after_load_mib:.0f} MiB", f"{v.rss_after_load_mib:.0f} MiB"),
            ("end of speech → final label, p50 / p95", p50_p95(a.end_to_label), p50_p95(v.end_to_label)),
            ("segment closed → final label, p50 / p95", p50_p95(a.compute), p50_p95(v.compute)),
            ("final labels / errors", f"{a.utterances} / {a.errors}", f"{v.utterances} / {v.errors}"),
            ("video frames / analysed / face found / dropped", "—",
             f"{v.video_frames} / {v.face_frames} / {v.faces_found} / {v.frames_dropped}")]
    if a.fast_x_realtime is not None and v.fast_x_realtime is not None:
        rows += [("then fast replay", f"{a.fast_x_realtime:.2f}× realtime", f"{v.fast_x_realtime:.2f}× realtime"),
                 ("peak RSS with the fast replay too", peak_fast(a), peak_fast(v))]
    if a.gpu_peak_allocated_mib is not None and v.gpu_peak_allocated_mib is not None:
        rows.append(("GPU peak (torch) / device used",
                     *(f"{r.gpu_peak_allocated_mib:.0f} / {r.gpu_used_mib:.0f} MiB" for r in (a, v))))
    if v.face is not None:
        f = v.face
        rows += [(f"face stage per {f.frame} frame: face found / no face", "—",
                  f"{f.analyze_face_ms:.1f} / {f.analyze_no_face_ms:.1f} ms"),
                 ("… of which Haar detection / CNN", "—", f"{f.detect_ms:.1f} / {f.classify_ms:.1f} ms"),
                 (f"… share of one core at {f.rate_hz:g} Hz (torch {f.torch_threads}, OpenCV {f.opencv_threads} threads)",
                  "—", f"{f.core_share:.0%}")]
    return ["| live session, fresh process | audio only | audio + video |", "|---|---:|---:|",
            *(f"| {name} | {x} | {y} |" for name, x, y in rows)]


def _seconds(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


# -- main ------------------------------------------------------------------------------------------


@dataclass
class Options:
    quick: bool = False
    out: Path | None = None
    checkpoint: Path | None = None
    device: str | None = None
    streams: int = 0
    streams_pace: str = "realtime"
    audio_seconds: float | None = None
    cache_dir: Path = DEFAULT_CACHE
    overrides: list[str] = dataclasses.field(default_factory=list)
    live: bool = True                  # section 9: the two live-session processes
    soak_minutes: float | None = None  # section 10: None = SOAK_MINUTES (SOAK_MINUTES_QUICK with --quick), 0 = skip
    child: ChildSpec | None = None     # set in the live-session process itself


def run(opts: Options, command: str) -> Report:
    started = time.perf_counter()
    loadavg = os.getloadavg()
    cfg = config.load(overrides=opts.overrides)
    cfg_batch1 = config.load(overrides=[*opts.overrides, "runtime.max_batch=1"])
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA device (use --device cpu, or a CUDA build of torch)")
    if opts.device == "cuda" or (opts.device is None and torch.cuda.is_available()):
        torch.cuda.reset_peak_memory_stats()
    checkpoint = opts.checkpoint or cfg.resolve(cfg.paths.checkpoint)
    seconds = opts.audio_seconds or (12.0 if opts.quick else 60.0)

    audio = make_speech(seconds, opts.cache_dir)
    log(f"test audio {audio.path}: {audio.duration_s:.1f} s, {len(audio.spans)} sentences")
    log("loading the models")
    engine, engine_s, warmup_s = measure_load(cfg, checkpoint, opts.device)
    rss_loaded = _status_mib("VmRSS") or 0.0
    env = environment(engine, loadavg)
    log("shared encoder pass vs encode + transcribe")
    shared = gain_shared_encoder(engine.whisper, utterance_clips(audio, cfg), repeats=1 if opts.quick else 3)
    log("FDRL head")
    head = bench_head(engine.ckpt.model, runs=20 if opts.quick else 50)
    bf16 = gain_bf16(engine.ckpt.model, runs=20 if opts.quick else 50)
    del engine
    gc.collect()

    pipe = asyncio.run(measure_pipeline(cfg, cfg_batch1, checkpoint, opts.device, audio, opts.streams, opts.streams_pace,
                                        rounds=1 if opts.quick else 3))
    gains = [shared, *gains_head(head), bf16, gain_fast_batching(pipe.fast, pipe.fast_batch1)]
    load = LoadTimes(round(engine_s, 3), round(warmup_s, 3), pipe.enter_s, rss_loaded)
    mem = memory()
    live = None
    if opts.live:
        session = make_session(audio, opts.cache_dir)
        log(f"live sessions in fresh processes: audio only, audio + video ({session})")
        live = measure_live(session, checkpoint, opts.device, opts.overrides, opts.quick)
        if live.audio_video.face is not None:
            gains.append(gain_detect_width(live.audio_video.face, cfg.face.detect_width))
    minutes = opts.soak_minutes if opts.soak_minutes is not None else SOAK_MINUTES_QUICK if opts.quick else SOAK_MINUTES
    soak = None
    if minutes > 0:
        log(f"short soak: {minutes:g} min of speech, fast, in a fresh process")
        soak = short_soak(minutes, opts.overrides, opts.cache_dir)
    return Report(command, env, audio, load, pipe.realtime, pipe.fast, pipe.fast_batch1, head, gains, pipe.streams,
                  mem, live, round(time.perf_counter() - started, 1), soak)


def short_soak(minutes: float, overrides: Sequence[str], cache_dir: Path) -> dict:
    """Section 10: `scripts/soak.py` for `minutes` (the first third, at most a minute, is warm-up) in a fresh process (this
    one has held two recognizers): RSS growth and slope, and the setup they depend on (torch build,
    CPU bf16 flags, allocator, `runtime.cpu_bf16`). Too short to prove a session flat (that is
    `scripts/soak.py --minutes 30`), long enough to show a steady climb (README "Memory")."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "soak.json"
        command = [sys.executable, str(PROJECT_ROOT / "scripts" / "soak.py"), "--minutes", f"{minutes:g}",
                   "--warmup-minutes", f"{min(1.0, minutes / 3):g}", "--cache-dir", str(cache_dir), "--out", str(out),
                   *[arg for o in overrides for arg in ("--set", o)]]
        proc = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
        if not out.is_file():
            raise RuntimeError(f"the short soak failed (status {proc.returncode}): {proc.stderr.strip()[-1000:]}")
        return json.loads(out.read_text())


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="12 s of audio and fewer repeats (a smoke run, not a measurement)")
    p.add_argument("--out", type=Path, help="write the JSON report here (stdout then holds only the Markdown tables)")
    p.add_argument("--checkpoint", type=Path, help="default: paths.checkpoint in config.toml")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: runtime.device in config.toml")
    p.add_argument("--streams", type=int, default=0, metavar="N", help="also replay N streams at once on one Recognizer")
    p.add_argument("--streams-pace", choices=("realtime", "fast"), default="realtime", help="pace of the --streams replays")
    p.add_argument("--audio-seconds", type=float, help="length of the test audio (default 60, 12 with --quick)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the generated audio and video are kept")
    p.add_argument("--no-live", action="store_true", help="skip the live sessions in fresh processes (section 9)")
    p.add_argument("--soak-minutes", type=float, metavar="M",
                   help=f"speech for the short soak (default {SOAK_MINUTES:g}, {SOAK_MINUTES_QUICK:g} with --quick; 0 skips it)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # JSON ChildSpec: this process is one live session
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable)")
    a = p.parse_args(argv)
    if a.streams < 0:
        p.error("--streams must be >= 0")
    if a.audio_seconds is not None and a.audio_seconds <= 0:
        p.error("--audio-seconds must be positive")
    if a.soak_minutes is not None and a.soak_minutes < 0:
        p.error("--soak-minutes must be >= 0")
    child = ChildSpec(**json.loads(a.child)) if a.child else None
    return Options(a.quick, a.out, a.checkpoint, a.device, a.streams, a.streams_pace, a.audio_seconds, a.cache_dir,
                   a.overrides, not a.no_live, a.soak_minutes, child)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        process.reexec_with_jemalloc()  # measure what the `fdrl` command runs (FDRL_MALLOC=system: glibc's)
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    if opts.child is not None:  # one live session: its JSON on one line of stdout, for `finish_live`
        print(json.dumps(dataclasses.asdict(asyncio.run(live_session(opts.child)))))
        return 0
    try:
        report = run(opts, shlex.join([".venv/bin/python", "-m", "bench.run", *argv]))
    except UserError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(dataclasses.asdict(report), indent=2)
    if opts.out is not None:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(text + "\n")
        log(f"wrote {opts.out}")
    else:
        print(text)
        print()
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
