"""Labelled utterances from recordings: one file (`recognize_file`) or a whole archive (`predict_command`).

The same pipeline as `fdrl replay`, not a second one: each file is a `FileSource` run through a
`Recognizer` that loads the models once for all files, and the final `Utterance` events are the
result. A file that cannot be read is a `FileResult` with an `error`, never an exception, so one
bad recording costs only itself; the command reports it and exits non-zero. `stream.distributed`
runs the same per-file step on Ray actors.

    from stream import recognize_file
    for u in recognize_file("talk.wav"):
        print(u.start, u.end, u.label, max(u.scores.values()), u.text)
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av

from fdrl import checkpoint as ckpt_mod
from fdrl.config import Config
from fdrl.errors import UserError
from fdrl.skips import SkipLog
from stream.events import Error, Stats, Utterance
from stream.exports import exporter
from stream.pipeline import Recognizer
from stream.sources import AudioChunk, FileSource

if TYPE_CHECKING:
    from stream.distributed import RayOptions

log = logging.getLogger(__name__)

# What a folder is searched for (a file named on the command line is read whatever its name):
# the usual audio and video containers, all of which FFmpeg (PyAV) decodes.
MEDIA_SUFFIXES = frozenset({
    ".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff", ".amr", ".caf",
    ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".3gp", ".ts", ".wmv"})


@dataclass(frozen=True)
class PredictOptions:
    """What every file of a job is run with."""

    checkpoint: Path | None = None   # default: paths.checkpoint
    face: bool = True                # a video file's pictures count (late fusion), as in `fdrl replay`
    device: str | None = None        # default: runtime.device


@dataclass(frozen=True)
class FileResult:
    """One file's final utterances in time order, or why it could not be read."""

    path: str
    utterances: tuple[Utterance, ...] = ()
    audio_s: float = 0.0
    segment_errors: tuple[str, ...] = ()   # segments whose inference failed (Error events): not labelled
    error: str | None = None               # the file could not be read at all


def find_media(paths: Sequence[Path]) -> list[Path]:
    """The files to label: each file as given, each folder's media files (by extension, recursively,
    sorted), in the order given and each once. A UserError for a missing path or nothing found."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file())
            if not inside:
                raise UserError(f"{path} holds no audio or video files ({', '.join(sorted(MEDIA_SUFFIXES))}): "
                                f"pass the files themselves or another folder")
            found += inside
        elif path.exists():
            found.append(path)
        else:
            raise UserError(f"{path} not found (check the path)")
    unique = {os.path.realpath(p): p for p in reversed(found)}  # the first mention of a file wins
    return [p for p in found if unique.get(os.path.realpath(p)) is p]


def media_seconds(path: Path) -> float:
    """The container's duration, for the progress bar (0 when the file does not say or cannot be read)."""
    try:
        with av.open(str(path)) as container:
            return max(0.0, (container.duration or 0) / av.time_base)
    except (av.error.FFmpegError, OSError, ValueError):
        return 0.0


async def _counted(source: FileSource, on_audio: Callable[[float], None]) -> AsyncIterator:
    """`source`'s items, telling `on_audio` the seconds of each audio chunk as it passes."""
    async for item in source:
        if isinstance(item, AudioChunk):
            on_audio(item.duration)
        yield item


async def recognize_path(recognizer: Recognizer, path: Path, face: bool = True,
                         on_audio: Callable[[float], None] | None = None, name: str | None = None) -> FileResult:
    """Run one file through a loaded recognizer. Its stream name is `name` (default: the path as
    given), so each utterance says which file it came from. A file that cannot be read, or stops
    decoding, gives a FileResult with its error."""
    name = name if name is not None else str(path)
    try:
        source = FileSource(path, path if face else None)
    except UserError as e:
        return FileResult(name, error=str(e))
    items = _counted(source, on_audio) if on_audio else source
    utterances: list[Utterance] = []
    errors: list[str] = []
    audio_s = 0.0
    try:
        async for event in recognizer.run(items, stream=name, counters=source):
            if isinstance(event, Utterance) and event.final:
                utterances.append(event)
            elif isinstance(event, Error):
                errors.append(f"{event.segment}: {event.message}")
            elif isinstance(event, Stats):
                audio_s = event.time
    except UserError as e:  # decoding failed part-way: what was labelled is not a whole result
        return FileResult(name, audio_s=audio_s, error=str(e))
    return FileResult(name, tuple(utterances), audio_s, tuple(errors))


def one_segment_at_a_time(cfg: Config) -> Config:
    """`cfg` with the recognizer's batches held to one segment.

    The recognizer batches the segments that are ready together, which depends on timing, and a
    segment transcribed in a padded batch can come out slightly different (a word, a last digit of a
    score). One at a time, a file gets the same utterances on every run and on every Ray worker.
    """
    return dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, max_batch=1))


async def _predict_local(files: Sequence[Path], cfg: Config, options: PredictOptions,
                         on_result: Callable[[FileResult], None], on_audio: Callable[[float], None] | None) -> list[FileResult]:
    results = []
    async with Recognizer(cfg, options.checkpoint, options.device, face=options.face) as recognizer:
        for path in files:
            results.append(await recognize_path(recognizer, path, options.face, on_audio))
            on_result(results[-1])
    return results


def predict_files(files: Sequence[Path], cfg: Config, options: PredictOptions = PredictOptions(),
                  on_result: Callable[[FileResult], None] = lambda r: None,
                  on_audio: Callable[[float], None] | None = None) -> list[FileResult]:
    """Every file in this process, one after another with the models loaded once, each segment on its own
    (`one_segment_at_a_time`); results in input order.
    `on_result` hears each file as it finishes, `on_audio` the seconds of audio as they are read."""
    return asyncio.run(_predict_local(files, one_segment_at_a_time(cfg), options, on_result, on_audio))


def recognize_file(path: str | Path, cfg: Config | None = None, checkpoint: str | Path | None = None,
                   face: bool = True) -> list[Utterance]:
    """The final utterances of one audio or video file (start, end, text, label, scores), synchronously.

    `cfg` defaults to `fdrl.config.load()` (the packaged defaults and the user's config file). For
    many files, `predict_files` loads the models once; for live audio, use the async `Recognizer`.
    Not for use inside a running event loop (it runs its own): there, use `Recognizer` directly.
    """
    from fdrl import config
    options = PredictOptions(Path(checkpoint) if checkpoint is not None else None, face)
    result = predict_files([Path(path)], cfg or config.load(), options)[0]
    if result.error is not None:
        raise UserError(result.error)
    return list(result.utterances)


def checkpoint_files(cfg: Config, options: PredictOptions) -> list[Path]:
    """The checkpoint's files a job reads (no output may replace them)."""
    return ckpt_mod.files(options.checkpoint or cfg.resolve(cfg.paths.checkpoint))


def predict_command(cfg: Config, paths: Sequence[Path], out: Path, options: PredictOptions = PredictOptions(),
                    ray: RayOptions | None = None, skips: SkipLog | None = None) -> list[FileResult]:
    """`fdrl predict`: label every file under `paths`, in this process or on Ray, and write `out` in the
    format its extension names. Everything the job can check is checked before the models load (the
    inputs exist, the format, `out` is none of the inputs and can be written). A file that cannot be
    read goes to `skips` and the others go on (a strict `skips` then fails the job); `out` is written
    once, atomically, at the end."""
    from fdrl.outputs import check_outputs, config_inputs, write_atomic
    from fdrl.progress import progress_bars
    skips = skips if skips is not None else SkipLog(strict=False)
    files = find_media(paths)
    export = exporter(out, len(files))
    check_outputs({"--out": out}, [*paths, *files, *checkpoint_files(cfg, options), *config_inputs(cfg)])
    seconds = {str(p): media_seconds(p) for p in files}
    with progress_bars({"files": len(files), "audio seconds": round(sum(seconds.values()), 1)}) as bars:
        if ray is None:
            results = predict_files(files, cfg, options, lambda r: bars["files"](1), bars["audio seconds"])
        else:
            from stream.distributed import predict_on_ray

            def finished(r: FileResult) -> None:  # a worker's file is seen only when it is done
                bars["files"](1)
                bars["audio seconds"](seconds[r.path])
            results = predict_on_ray(files, cfg, options, ray, finished)
    for r in results:
        if r.error is not None:
            skips.skip(r.path, r.error)
        for message in r.segment_errors:
            log.warning("%s: a segment was not labelled: %s", r.path, message)
    skips.check()  # strict: a file that could not be read fails the job, and nothing is written
    write_atomic(out, export([u for r in results for u in r.utterances], cfg.labels.names))
    return results
