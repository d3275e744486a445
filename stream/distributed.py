"""`fdrl predict --ray`: the files of one job spread over Ray actors, results as the single process gives them.

Each actor is a `Recognizer` that loads the models once and then labels one file per call with
the same step as the single process (`stream.batch.recognize_path`), so a file gets the same
utterances wherever it runs. The driver keeps every actor busy with one file, puts each result
in its input slot (the output's order is the input's, whatever finishes first), and tries a file
at most `ATTEMPTS` times: a call that raised, or an actor that died with it (a lost node, a killed
process, out of memory), is retried once, on a fresh actor for a lost one, and then reported as
that file's error. No file is left out silently.

The files are opened by the actors, so on a real cluster they must be at the same path on every
node (a shared or mounted folder), with fdrl-stream and its defaults installed there.
Ray is an optional extra: `pip install 'fdrl-stream[ray]'`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fdrl.config import Config
from fdrl.errors import UserError
from stream.batch import FileResult, PredictOptions, one_segment_at_a_time, recognize_path

ATTEMPTS = 2  # a file is tried once, and once more after a failure


@dataclass(frozen=True)
class RayOptions:
    """Where the job runs and what each actor holds."""

    address: str | None = None        # None: start a local Ray for this job; "auto" or "HOST:PORT": join a cluster
    workers: int | None = None        # actors; default: as many as the cluster's CPUs (or GPUs) hold
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0      # > 0: the actor's models run on its GPU

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--ray-workers {self.workers}: give at least 1")
        if not 0 < self.cpus_per_worker < math.inf:
            raise UserError(f"--ray-cpus {self.cpus_per_worker:g}: give a positive number of CPUs per worker")
        if not 0 <= self.gpus_per_worker < math.inf:
            raise UserError(f"--ray-gpus {self.gpus_per_worker:g}: give 0 (CPU) or a positive number of GPUs per worker")


def import_ray() -> Any:
    """The `ray` module, or a one-line UserError naming the extra that brings it."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray, which is not installed: pip install 'fdrl-stream[ray]'") from None
    return ray


class Worker:
    """One Ray actor: the models loaded once, then one file per `recognize` call.

    An actor runs one call at a time, so its event loop is driven from each call in turn.
    """

    def __init__(self, cfg: Config, options: PredictOptions, threads: int) -> None:
        import torch

        from stream.pipeline import Recognizer
        torch.set_num_threads(threads)
        self.face = options.face
        self.loop = asyncio.new_event_loop()
        self.recognizer = Recognizer(cfg, options.checkpoint, options.device, face=options.face)
        self.loop.run_until_complete(self.recognizer.__aenter__())

    def recognize(self, path: str, name: str) -> FileResult:
        return self.loop.run_until_complete(recognize_path(self.recognizer, Path(path), self.face, name=name))


def actor_threads(ray_options: RayOptions) -> int:
    """The threads an actor computes with: one per CPU it holds (at least one)."""
    return max(1, math.floor(ray_options.cpus_per_worker))


def actor_setup(cfg: Config, options: PredictOptions, ray_options: RayOptions) -> tuple[Config, PredictOptions]:
    """What an actor runs with: segments one at a time as in the single process, as many threads as
    it has CPUs (for Whisper, and for torch in `Worker`), and the CPU unless it holds a GPU.

    Some of torch's kernels (the bfloat16 head, `runtime.cpu_bf16`) sum in another order with
    another number of threads, changing last digits: an actor's values are always those of a single
    process with as many threads (`OMP_NUM_THREADS=N`)."""
    encoders = dataclasses.replace(cfg.encoders, whisper_threads=actor_threads(ray_options))
    cfg = dataclasses.replace(one_segment_at_a_time(cfg), encoders=encoders)
    device = "cuda" if ray_options.gpus_per_worker > 0 else "cpu"
    return cfg, dataclasses.replace(options, device=device)


def worker_count(ray: Any, ray_options: RayOptions, n_files: int) -> int:
    """The actors to start: as asked, else as many as the cluster's resources hold; never more than the files."""
    if ray_options.workers is not None:
        return max(1, min(ray_options.workers, n_files))
    resources = ray.cluster_resources()
    fits = (resources.get("GPU", 0) / ray_options.gpus_per_worker if ray_options.gpus_per_worker > 0
            else resources.get("CPU", 1) / ray_options.cpus_per_worker)
    return max(1, min(int(fits), n_files))


def predict_on_ray(files: Sequence[Path], cfg: Config, options: PredictOptions, ray_options: RayOptions,
                   on_result: Callable[[FileResult], None] = lambda r: None) -> list[FileResult]:
    """Every file on Ray actors; results in input order, each failure retried once, then reported.

    Starts Ray (or joins `ray_options.address`) for the job and stops it after, unless this process
    is connected to Ray already: then that cluster is used and left as it was."""
    ray = import_ray()
    if options.checkpoint is not None:  # the actors open it by name, maybe on another node
        options = dataclasses.replace(options, checkpoint=options.checkpoint.resolve())
    cfg, options = actor_setup(cfg, options, ray_options)
    started = not ray.is_initialized()  # a program already connected to Ray keeps its cluster and connection
    if started:
        ray.init(address=ray_options.address or "local", include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False, configure_logging=False)
    try:
        actor_class = ray.remote(num_cpus=ray_options.cpus_per_worker, num_gpus=ray_options.gpus_per_worker,
                                 max_restarts=0)(Worker)
        threads = actor_threads(ray_options)
        return dispatch(ray, files, lambda: actor_class.remote(cfg, options, threads),
                        worker_count(ray, ray_options, len(files)), on_result)
    finally:
        if started:
            ray.shutdown()


def dispatch(ray: Any, files: Sequence[Path], spawn: Callable[[], Any], workers: int,
              on_result: Callable[[FileResult], None]) -> list[FileResult]:
    """Keep `workers` actors from `spawn` busy with one file each (their `recognize(path, name)`) until
    every file has a result: its FileResult, or after `ATTEMPTS` failures the reason of the last."""
    results: list[FileResult | None] = [None] * len(files)
    attempts = [0] * len(files)
    todo = deque(range(len(files)))
    idle = [spawn() for _ in range(workers)]
    running: dict[Any, tuple[int, Any]] = {}  # call -> (file index, actor)

    def failed(k: int, reason: str) -> None:
        if attempts[k] < ATTEMPTS:
            todo.appendleft(k)
            return
        results[k] = FileResult(str(files[k]), error=f"failed {ATTEMPTS} times on Ray: {reason}")
        on_result(results[k])

    while todo or running:
        while todo and idle:
            k, actor = todo.popleft(), idle.pop()
            attempts[k] += 1
            running[actor.recognize.remote(str(files[k].resolve()), str(files[k]))] = (k, actor)
        [done], _ = ray.wait(list(running), num_returns=1)
        k, actor = running.pop(done)
        try:
            results[k] = ray.get(done)
        except ray.exceptions.RayActorError as e:  # the actor is gone: the next file gets a new one
            idle.append(spawn())
            failed(k, f"worker lost ({_reason(e)})")
            continue
        except ray.exceptions.RayError as e:       # the call raised: the actor itself is still good
            idle.append(actor)
            failed(k, _reason(e))
            continue
        idle.append(actor)
        on_result(results[k])
    return [r for r in results if r is not None]


def _reason(e: BaseException) -> str:
    """The last line of a Ray error: the exception's own message, under the remote traceback."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(e).__name__
