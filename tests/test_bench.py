"""The benchmark's smoke run: `python -m bench.run --quick` on a few seconds of generated speech prints
a JSON report, then Markdown tables, and the figures in them hang together.

Timings themselves are not checked (the machine may be busy); structure and invariants are: every
sentence gets one final label, max_batch=1 means batches of one, the VAD's hangover separates
"end of speech" from "segment closed", each gain's ratio is its two timings divided, the live
audio + video process analyses the generated video at the face rate and finds the drawn face in it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.version import Version

from bench.run import (
    CAMERA_FPS,
    VIDEO_SIZE,
    Dist,
    backdrop,
    dist,
    drawn_face,
    make_session,
    make_speech,
    no_face,
)
from fdrl import config
from fdrl.checkpoint import save
from fdrl.speaker import Moments, SpeakerNorm
from fdrl.config import PROJECT_ROOT
from fdrl.face import FaceAnalyzer
from fdrl.features import FeatureExtractor
from fdrl.model import DEFAULT_DIMS, FDRL
from fdrl.video import read_frames
from stream.record import load_session


def test_dist_interpolates_percentiles_in_milliseconds():
    # 10..50 ms: p50 is the middle value; p95 sits at rank 0.95 * 4 = 3.8, i.e. 40 + 0.8 * 10.
    assert dist([0.01, 0.02, 0.03, 0.04, 0.05]) == Dist(n=5, p50_ms=30.0, p95_ms=48.0, mean_ms=30.0, max_ms=50.0)
    assert dist([]) is None


def test_drawn_face_is_detected_and_the_bare_scene_is_not():
    analyzer = FaceAnalyzer.from_config(config.load())
    scene = backdrop()
    assert scene.shape == VIDEO_SIZE and scene.std() > 10  # textured, not blank
    for t in (0.0, 0.4, 1.3):  # swaying and talking: every pose is still a face
        result = analyzer.analyze(drawn_face(scene, t))
        assert result is not None and abs(result.box[0] + result.box[2] / 2 - VIDEO_SIZE[1] / 2) < 40
    assert analyzer.analyze(no_face(scene)) is None


def test_session_holds_the_audio_and_video_at_the_camera_rate(tmp_path):
    audio = make_speech(3.0, tmp_path)
    folder = make_session(audio, tmp_path)
    session = load_session(folder)
    assert session.video is not None and session.meta["complete"]
    assert session.meta["audio_s"] == pytest.approx(audio.duration_s, abs=0.01)
    frames = list(read_frames(session.video, rate_hz=1000.0))
    assert len(frames) == session.meta["video_frames"] == int(audio.duration_s * CAMERA_FPS)
    assert frames[1][0] == pytest.approx(1 / CAMERA_FPS, abs=0.002) and frames[0][1].shape == (*VIDEO_SIZE, 3)
    assert make_session(audio, tmp_path) == folder  # cached: made once


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint file with untrained weights: the benchmark times the model, not its accuracy."""
    cfg = config.load()
    dims = {m: DEFAULT_DIMS[m] for m in ("audio", "text")}
    path = tmp_path_factory.mktemp("bench") / "untrained.safetensors"
    prior = Moments(1.0, np.zeros(dims["audio"]), np.ones(dims["audio"]))  # an untrained model: unit statistics
    save(path, FDRL(cfg.model, dims, len(cfg.labels.names)), cfg.labels.names, dims,
         FeatureExtractor(cfg, cache=False).encoder_ids, cfg.model, speaker_norm=SpeakerNorm(prior, 500))
    return path


@pytest.fixture(scope="module")
def quick_run(untrained_checkpoint, tmp_path_factory) -> tuple[dict, str]:
    cache = tmp_path_factory.mktemp("bench-cache")
    args = ["--quick", "--audio-seconds", "5", "--device", "cpu", "--checkpoint", str(untrained_checkpoint),
            "--cache-dir", str(cache), "--streams", "2", "--streams-pace", "fast", "--soak-minutes", "0.5"]
    proc = subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report, end = json.JSONDecoder().raw_decode(proc.stdout)
    return report, proc.stdout[end:]


def test_quick_run_reports_every_measurement(quick_run):
    report, _ = quick_run
    env = report["environment"]
    assert env["device"] == "cpu" and env["cores"] >= 1 and env["cpu"]
    # The report reads the package metadata, which may lack the build's local tag ("+cu130" on PyPI's wheel).
    assert Version(env["versions"]["torch"]).public == Version(torch.__version__).public and env["torch_threads"] >= 1
    assert env["whisper_compute_type"].startswith("int8")

    n = len(report["audio"]["sentences"])
    assert n == 2 and len(report["audio"]["spans"]) == n  # 5 s asked for: two ~2.5 s sentences and their pauses

    rt = report["realtime"]
    assert rt["utterances"] == n and rt["errors"] == 0
    stages = rt["stages"]
    for key in ("encode", "asr", "model", "queue", "compute", "end_to_label"):
        assert stages[key]["n"] == n and stages[key]["p95_ms"] >= stages[key]["p50_ms"] >= 0
    # End of speech comes a VAD hangover (500 ms) before the segment closes.
    assert stages["end_to_label"]["p50_ms"] >= stages["compute"]["p50_ms"] + 300
    assert rt["provisional_compute"]["n"] == n
    assert rt["provisional_compute"]["p50_ms"] <= stages["compute"]["p50_ms"]  # provisional comes first
    assert rt["wall_s"] >= report["audio"]["duration_s"] - 0.5                  # realtime pace

    assert report["fast"]["utterances"] == report["fast_batch1"]["utterances"] == n
    assert report["fast_batch1"]["max_batch"] == 1 and report["fast_batch1"]["mean_batch"] == 1.0
    assert report["fast"]["max_batch"] == config.load().runtime.max_batch and report["fast"]["mean_batch"] >= 1.0
    for fast in (report["fast"], report["fast_batch1"]):
        assert fast["x_realtime"] == pytest.approx(fast["audio_s"] / fast["wall_s"], rel=0.01)

    streams = report["streams"]
    assert streams["streams"] == 2 and streams["utterances"] == 2 * n and streams["errors"] == 0
    assert streams["meets_target"] is None  # only judged for >= 64 realtime streams

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    assert [(p["device"], p["batch"]) for p in report["head"]] == [(d, b) for d in devices for b in (1, 8, 32, 128)]
    for p in report["head"]:
        assert p["utterances_per_s"] == pytest.approx(p["batch"] / (p["latency_ms"] / 1000), rel=0.01)

    gains = {g["name"]: g for g in report["gains"]}
    assert set(gains) == {"shared Whisper encoder pass", "micro-batching (fast replay)", "bf16 autocast, FDRL head (cpu)",
                          "Haar detection on a smaller copy", *(f"batched FDRL head ({d})" for d in devices)}
    for g in gains.values():
        assert g["ratio"] == pytest.approx(g["plain_s"] / g["optimized_s"], rel=0.01)
    # Reusing the encoder output must not change what Whisper writes when both paths run the same int8 encoder.
    note = gains["shared Whisper encoder pass"]["note"]
    if config.load().encoders.whisper_layer == 0:
        assert f"identical transcripts {n}/{n}" in note
    else:  # the decoder reads the float32 port's output, faster-whisper's own path the int8 encoder's
        assert "identical transcripts" in note and "torch port" in note

    load, mem = report["load"], report["memory"]
    assert load["engine_s"] > 0 and load["warmup_s"] > 0 and load["recognizer_enter_s"] > 0
    assert mem["peak_rss_mib"] >= load["rss_after_load_mib"] > 50
    assert report["bench_wall_s"] > rt["wall_s"] + report["live"]["audio_video"]["wall_s"]


def test_quick_run_measures_live_audio_and_video_in_fresh_processes(quick_run):
    report, _ = quick_run
    n, audio_s = len(report["audio"]["sentences"]), report["audio"]["duration_s"]
    live = report["live"]
    a, v = live["audio_only"], live["audio_video"]
    assert (a["video"], v["video"]) == (False, True)
    for r in (a, v):
        assert r["utterances"] == n and r["errors"] == 0
        assert r["wall_s"] >= audio_s - 0.5 and r["end_to_label"]["n"] == n     # realtime pace, live latencies
        assert r["peak_rss_mib"] >= r["rss_after_load_mib"] > 50
        assert r["fast_x_realtime"] is r["fast_utterances"] is r["peak_rss_after_fast_mib"] is None  # not with --quick
    # A fresh process holds one recognizer: less than this bench process, which held two at once.
    assert a["peak_rss_mib"] < report["memory"]["vm_hwm_mib"]
    assert live["rss_ratio"] == pytest.approx(v["peak_rss_mib"] / a["peak_rss_mib"], rel=0.01)
    assert live["meets_rss_target"] == (v["peak_rss_mib"] <= live["rss_target_mib"])

    assert a["video_frames"] == a["face_frames"] == 0 and a["face"] is None
    assert v["video_frames"] == int(audio_s * CAMERA_FPS)
    # The face stage samples the 10 fps video at face.rate_hz (5 Hz) and finds the drawn face in every frame.
    # A busy machine makes it fall behind (live: oldest frames dropped; frames queued at the end are not analysed).
    assert audio_s * 5 / 4 <= v["face_frames"] <= audio_s * 5 + 1
    assert v["faces_found"] == v["face_frames"]
    face = v["face"]
    assert face["frame"] == "640x480" and face["face_found"] and face["rate_hz"] == 5.0
    assert face["analyze_face_ms"] > face["classify_ms"] > 0 and face["detect_ms"] > 0
    assert face["core_share"] == pytest.approx(face["analyze_face_ms"] * 5 / 1000, rel=0.01)
    assert face["torch_threads"] >= 1 and face["opencv_threads"] >= 1


def test_quick_run_ends_with_a_short_soak_that_says_what_it_ran_under(quick_run):
    report, markdown = quick_run
    soak, setup = report["soak"], report["soak"]["setup"]
    assert soak["minutes"] >= 0.5 and soak["accounting_ok"] and soak["utterances"] > 0
    assert isinstance(soak["slope_mb_per_h"], float) and soak["allocator"] in ("glibc", "jemalloc", "tcmalloc")
    assert Version(setup["torch"]).public == Version(torch.__version__).public
    assert setup["cpu_bf16"] is False and {"avx512_bf16", "amx", "cpu"} <= set(setup)  # bf16 off by default
    assert "| slope after warm-up |" in markdown


def test_quick_run_prints_markdown_tables_after_the_json(quick_run):
    _, markdown = quick_run
    lines = markdown.strip().splitlines()
    assert lines[0].startswith("## fdrl-stream benchmark")
    assert "| latency (realtime replay) | p50 | p95 | n |" in lines
    assert "| claimed gain | plain | optimized | plain / optimized | what |" in lines
    assert "| live session, fresh process | audio only | audio + video |" in lines
    assert lines[-1].startswith("Reproduce: `.venv/bin/python -m bench.run --quick ")
    # Each table: a header, a separator row, and rows with the header's number of cells.
    tables: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("|"):
            tables[-1].append(line)
        elif tables[-1]:
            tables.append([])
    tables = [t for t in tables if t]
    assert len(tables) == 6
    for table in tables:
        assert set(table[1]) <= set("|-: ")
        assert len(table) > 2 and len({row.count("|") for row in table}) == 1, table


def test_load_capacity_is_the_largest_n_that_passed_and_says_so_when_none_did():
    from bench.load import Round, table

    def round_(n: int, passed: bool) -> Round:
        return Round(n=n, p50_s=1.0, p95_s=1.2 if passed else 9.0, utterances=10 * n, dropped_s=0.0, errors=0,
                     peak_rss_mib=600.0, mean_batch=1.0, cpu_per_audio_s=0.18, compute_p95_s=0.5, load_avg=1.0,
                     passed=passed, first_errors=[])

    assert table([round_(1, True), round_(4, True), round_(8, False)]).endswith("capacity: 4 live streams")
    assert table([round_(12, False), round_(16, False)]).endswith("capacity: fewer than 12 live streams (no round passed)")
