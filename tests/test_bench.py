"""The benchmark's smoke run: `python -m bench.run --quick` on a few seconds of generated speech prints
a JSON report, then Markdown tables, and the figures in them hang together.

Timings themselves are not checked (the machine may be busy); structure and invariants are: every
sentence gets one final label, max_batch=1 means batches of one, the VAD's hangover separates
"end of speech" from "segment closed", each gain's ratio is its two timings divided.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.run import Dist, dist
from fdrl import config
from fdrl.checkpoint import save
from fdrl.config import PROJECT_ROOT
from fdrl.features import FeatureExtractor
from fdrl.model import DEFAULT_DIMS, FDRL


def test_dist_interpolates_percentiles_in_milliseconds():
    # 10..50 ms: p50 is the middle value; p95 sits at rank 0.95 * 4 = 3.8, i.e. 40 + 0.8 * 10.
    assert dist([0.01, 0.02, 0.03, 0.04, 0.05]) == Dist(n=5, p50_ms=30.0, p95_ms=48.0, mean_ms=30.0, max_ms=50.0)
    assert dist([]) is None


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint file with untrained weights: the benchmark times the model, not its accuracy."""
    cfg = config.load()
    dims = {m: DEFAULT_DIMS[m] for m in ("audio", "text")}
    path = tmp_path_factory.mktemp("bench") / "untrained.pt"
    save(path, FDRL(cfg.model, dims, len(cfg.labels.names)), cfg.labels.names, dims,
         FeatureExtractor(cfg, cache=False).encoder_ids, cfg.model)
    return path


@pytest.fixture(scope="module")
def quick_run(untrained_checkpoint, tmp_path_factory) -> tuple[dict, str]:
    cache = tmp_path_factory.mktemp("bench-cache")
    args = ["--quick", "--audio-seconds", "5", "--device", "cpu", "--checkpoint", str(untrained_checkpoint),
            "--cache-dir", str(cache), "--streams", "2", "--streams-pace", "fast"]
    proc = subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report, end = json.JSONDecoder().raw_decode(proc.stdout)
    return report, proc.stdout[end:]


def test_quick_run_reports_every_measurement(quick_run):
    report, _ = quick_run
    env = report["environment"]
    assert env["device"] == "cpu" and env["cores"] >= 1 and env["cpu"]
    assert env["versions"]["torch"] == torch.__version__ and env["torch_threads"] >= 1
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
    assert set(gains) == {"shared Whisper encoder pass", "micro-batching (fast replay)",
                          *(f"batched FDRL head ({d})" for d in devices)}
    for g in gains.values():
        assert g["ratio"] == pytest.approx(g["plain_s"] / g["optimized_s"], rel=0.01)
    # Reusing the encoder output must not change what Whisper writes.
    assert f"identical transcripts {n}/{n}" in gains["shared Whisper encoder pass"]["note"]

    load, mem = report["load"], report["memory"]
    assert load["engine_s"] > 0 and load["warmup_s"] > 0 and load["recognizer_enter_s"] > 0
    assert mem["peak_rss_mib"] >= load["rss_after_load_mib"] > 50
    assert report["bench_wall_s"] > rt["wall_s"]


def test_quick_run_prints_markdown_tables_after_the_json(quick_run):
    _, markdown = quick_run
    lines = markdown.strip().splitlines()
    assert lines[0].startswith("## fdrl-stream benchmark")
    assert "| latency (realtime replay) | p50 | p95 | n |" in lines
    assert "| claimed gain | plain | optimized | plain / optimized | what |" in lines
    assert lines[-1].startswith("Reproduce: `.venv/bin/python -m bench.run --quick ")
    # Each table: a header, a separator row, and rows with the header's number of cells.
    tables: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("|"):
            tables[-1].append(line)
        elif tables[-1]:
            tables.append([])
    tables = [t for t in tables if t]
    assert len(tables) == 4
    for table in tables:
        assert set(table[1]) <= set("|-: ")
        assert len(table) > 2 and len({row.count("|") for row in table}) == 1, table
