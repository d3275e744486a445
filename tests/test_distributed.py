"""`fdrl predict --ray` on a real local Ray started here: the same results as one process, and retries."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from fdrl import config
from stream.batch import FileResult, PredictOptions, predict_files
from stream.cli import main
from stream.distributed import ATTEMPTS, RayOptions, dispatch, predict_on_ray
from stream.exports import to_csv

CLIPS = Path(__file__).resolve().parent.parent / "demo" / "clips"


def test_without_ray_the_flag_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed: `import ray` fails
    assert main(["predict", str(CLIPS / "02-anger.wav"), "--out", str(tmp_path / "x.csv"), "--ray"]) == 2
    err = capsys.readouterr().err
    assert err == "fdrl: error: --ray needs Ray, which is not installed: pip install 'fdrl-stream[ray]'\n"


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'fdrl-stream[ray]'")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def one_thread():
    """Some of torch's kernels (the bfloat16 head) sum differently with another thread count: compare
    at the actors' one thread, so the test holds whatever the kernels."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ray_gives_the_single_process_results_in_order(ray, one_thread, tmp_path):
    files = [tmp_path / "b-anger.wav", tmp_path / "a-surprise.wav", tmp_path / "unreadable.wav"]
    shutil.copy(CLIPS / "02-anger.wav", files[0])
    shutil.copy(CLIPS / "06-surprise.wav", files[1])
    files[2].write_bytes(b"\0" * 100)
    cfg = config.load()
    seen: list[str] = []
    on_ray = predict_on_ray(files, cfg, PredictOptions(), RayOptions(workers=2, cpus_per_worker=1),
                            lambda r: seen.append(r.path))
    here = predict_files(files, cfg, PredictOptions())
    assert [r.path for r in on_ray] == [str(f) for f in files] and sorted(seen) == sorted(map(str, files))
    labels = cfg.labels.names
    assert to_csv([u for r in on_ray for u in r.utterances], labels) == to_csv([u for r in here for u in r.utterances], labels)
    assert [len(r.utterances) for r in on_ray] == [1, 1, 0]
    assert on_ray[2].error is not None and on_ray[2].error == here[2].error.replace(str(files[2]), str(files[2].resolve()))


class Flaky:
    """Stands in for `Worker` to drive the retries: "dies" kills its actor's process, "raises-once"
    fails on its first try only (a marker file remembers it across actors)."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def recognize(self, path: str, name: str) -> FileResult:
        if name == "dies":
            os._exit(1)
        if name == "raises-once" and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError("a passing fault")
        return FileResult(name, audio_s=1.0)


def test_a_failed_file_and_a_lost_worker_are_retried_once_then_reported(ray, tmp_path):
    actor = ray.remote(num_cpus=0.1, max_restarts=0)(Flaky)
    spawned = []

    def spawn():
        spawned.append(actor.remote(str(tmp_path / "marker")))
        return spawned[-1]

    files = [Path("ok-1"), Path("raises-once"), Path("dies"), Path("ok-2")]
    results = dispatch(ray, files, spawn, 2, lambda r: None)
    assert [r.path for r in results] == ["ok-1", "raises-once", "dies", "ok-2"]
    assert [r.error for r in results if r.path != "dies"] == [None, None, None]
    assert results[2].error.startswith(f"failed {ATTEMPTS} times on Ray: worker lost")
    assert len(spawned) == 2 + ATTEMPTS  # each death was replaced by a fresh actor
