"""The `fdrl` command: a thin layer over the library. Each subcommand parses flags and calls one function."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from fdrl.errors import UserError

if TYPE_CHECKING:
    from stream.events import Stats


def _config(args: argparse.Namespace, extra: Sequence[str] = ()):
    """The config from --config and --set, given before the subcommand or after it (after wins)."""
    from fdrl import config
    return config.load(args.command_config or args.config, [*args.set, *args.command_set, *extra])


# A batch command that finished but left out lines that could not be used (its figures are on
# fewer lines than it was given). 2 stays "nothing done: bad input" (a UserError).
EXIT_SKIPPED = 1


def _skip_log(args: argparse.Namespace):
    from fdrl.skips import SkipLog
    return SkipLog(strict=args.strict)


def _exit_status(skips) -> int:
    """0, or EXIT_SKIPPED with a summary line when some lines were left out (each was reported as it was)."""
    if not len(skips):
        return 0
    print(f"fdrl: {len(skips)} lines skipped (see the warnings above; --strict stops at the first)", file=sys.stderr)
    return EXIT_SKIPPED


def cmd_train(args: argparse.Namespace) -> int:
    from fdrl.train import Corpora, train_command
    overrides = [f"train.epochs={args.epochs}"] if args.epochs else []
    cfg = _config(args, overrides)
    corpora = Corpora(args.ravdess, args.goemotions, args.iemocap, args.manifest, args.tess, args.emovo, args.dailydialog)
    skips = _skip_log(args)
    result = train_command(cfg, corpora, args.out, cv=args.cv, ablation=args.ablation, seeds=args.seeds, report=args.report,
                           skips=skips)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, default=float)[:2000] if args.json else f"saved {args.out}")
    return _exit_status(skips)


def cmd_tune_text(args: argparse.Namespace) -> int:
    from fdrl.tune_text import tune_command
    flags = {"layers": args.layers, "epochs": args.epochs, "seed": args.seed, "balanced": args.balanced or None,
             "dialogue_neutral": args.dialogue_neutral}
    cfg = _config(args, [f"tune_text.{k}={str(v).lower()}" for k, v in flags.items() if v is not None])
    skips = _skip_log(args)
    result = tune_command(cfg, args.goemotions, args.out, skips, dailydialog=args.dailydialog)
    print(json.dumps(result) if args.json else f"saved {args.out} (use it with --set encoders.text_tuned={args.out})")
    return _exit_status(skips)


def cmd_eval(args: argparse.Namespace) -> int:
    from fdrl.evaluate import evaluate
    cfg = _config(args)
    skips = _skip_log(args)
    result = evaluate(args.manifest, cfg, args.checkpoint, args.plot, skips)
    if args.json:
        print(json.dumps(result))
    else:
        _print_eval(result)
    return _exit_status(skips)


def _print_eval(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"n={result['n']}  WAR {100 * result['war']:.2f}%  UAR {100 * result['uar']:.2f}%  macro-F1 {result['macro_f1']:.3f}")
    for col in ("label", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for label, m in result["per_class"].items():
        table.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    Console().print(table)


# After a stop signal the session drains within SessionOptions.drain_s, but a compute batch already
# running cannot be interrupted, and the interpreter waits for its thread at exit. Past this, the
# process just ends (see _Watchdog).
EXIT_DEADLINE_S = 1.85


def _run_session_command(args: argparse.Namespace, cfg, source, live: bool, inputs: Sequence[Path | None] = ()) -> int:
    """Run a session; the first SIGINT or SIGTERM stops it cleanly (see stream/session.py), a second kills it.

    A stopped session ends the process with status 128 + the signal number (130 after Ctrl-C, 143
    after SIGTERM), the shell's convention for "ended by a signal", once its files are closed and its
    Stats printed; it does not return to the caller.
    """
    import asyncio

    from stream.session import SessionOptions
    from stream.ui import format_stats
    read = (*inputs, args.command_config or args.config)  # no output may be one of them (fdrl.outputs)
    options = SessionOptions(live=live, jsonl=args.jsonl, record=args.record, plot=args.plot,
                             checkpoint=args.checkpoint, face=not args.no_video,
                             inputs=tuple(Path(p) for p in read if p is not None))
    watchdog = _Watchdog(EXIT_DEADLINE_S)
    try:
        stats, signum = asyncio.run(_stoppable(cfg, source, options, watchdog))
    finally:
        watchdog.disarm()
    if stats is not None and sys.stdout.isatty():  # the plain view already ends with this line
        print(format_stats(stats), file=sys.stderr)
    if signum is None:
        return 0
    if stats is None:
        print(f"fdrl: stopped with segments still unlabelled after {options.drain_s:.1f} s: no final stats",
              file=sys.stderr)
    # Everything is closed and flushed: skip the interpreter's teardown (libtorch's destructors
    # are slow), so the process ends well within 2 s of the signal.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


async def _stoppable(cfg, source, options, watchdog: _Watchdog) -> tuple[Stats | None, int | None]:
    """The session, stopped by the first SIGINT/SIGTERM; returns its final Stats and that signal (or None)."""
    import asyncio

    from stream.session import run_session, stop_on_signals
    stop = asyncio.Event()
    with stop_on_signals(stop, on_signal=watchdog.arm) as received:
        stats = await run_session(cfg, source, options, stop=stop)
    return stats, received[0] if received else None


class _Watchdog:
    """Ends the process `seconds` after a stop signal if it is still running then.

    Nothing is corrupted by it: the recording and JSONL are valid at every moment (stream/record.py),
    and by then the session has normally closed them; what is lost is a compute batch still running.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def arm(self, signum: int) -> None:
        self._timer = threading.Timer(self.seconds, self._fire, (signum,))
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self, signum: int) -> None:
        os.write(2, b"fdrl: shutdown took too long: exiting now\n")  # not print: the main thread may hold its lock
        os._exit(128 + signum)


def cmd_replay(args: argparse.Namespace) -> int:
    from stream.record import load_session
    from stream.sources import FileSource
    cfg = _config(args)
    audio, video = args.path, args.video
    if args.path.is_dir():
        session = load_session(args.path)
        audio, video = session.audio, video or session.video
    # A video file's own pictures are used unless --video names others or --no-video is given.
    source = FileSource(audio, None if args.no_video else (video or audio), pace=args.pace)
    if args.video and not args.no_video and not source.has_video:
        raise UserError(f"{args.video} has no video track (pass a video file to --video)")
    if not source.has_audio:
        print(f"fdrl: warning: {audio} has no audio track: only face labels will be shown", file=sys.stderr)
    return _run_session_command(args, cfg, source, live=args.pace == "realtime", inputs=(args.path, args.video))


def cmd_live(args: argparse.Namespace) -> int:
    from stream.sources import CameraSource, MicrophoneSource, merge
    cfg = _config(args)
    device = int(args.device) if args.device is not None and args.device.isdigit() else args.device
    mic = MicrophoneSource(device)
    source = mic if args.no_video else merge(mic, CameraSource(args.camera, fps=max(cfg.face.rate_hz, 10.0)))
    return _run_session_command(args, cfg, source, live=True)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; then every connection gets its final stats and the process exits 0 within 2 s."""
    import asyncio

    from stream.server import ServeOptions, serve
    from stream.session import stop_on_signals
    flags = {"host": args.host, "port": args.port}
    cfg = _config(args, [f"serve.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None])
    if args.origin:  # added to the configured ones, not instead of them
        from fdrl import config
        cfg = config.merge(cfg, {"serve": {"origins": [*cfg.serve.origins, *args.origin]}})
    options = ServeOptions(token=args.token or os.environ.get("FDRL_TOKEN") or None, certfile=args.certfile,
                           keyfile=args.keyfile, checkpoint=args.checkpoint)
    options.check(cfg.serve.host)  # before the models load: a refused start is immediate
    watchdog = _Watchdog(EXIT_DEADLINE_S)

    async def run() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop, on_signal=watchdog.arm):
            await serve(cfg, options, stop, on_ready=lambda line: print(f"fdrl serve: {line}", file=sys.stderr, flush=True))

    try:
        asyncio.run(run())
    finally:
        watchdog.disarm()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as after a stopped session: libtorch's teardown would outlast the 2 s


def cmd_predict(args: argparse.Namespace) -> int:
    from stream.batch import PredictOptions, predict_command
    from stream.distributed import RayOptions
    cfg = _config(args)
    options = PredictOptions(args.checkpoint, face=not args.no_video)
    ray = None
    if args.ray is not None:
        ray = RayOptions(None if args.ray == "local" else args.ray, args.ray_workers, args.ray_cpus, args.ray_gpus)
    skips = _skip_log(args)
    results = predict_command(cfg, args.paths, args.out, options, ray, skips)
    utterances = sum(len(r.utterances) for r in results)
    print(f"{len(results)} files, {utterances} utterances -> {args.out}", file=sys.stderr)
    if len(skips):
        print(f"fdrl: {len(skips)} of {len(results)} files could not be read (see the warnings above)", file=sys.stderr)
        return EXIT_SKIPPED
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from stream.sources import list_devices
    devices = list_devices()
    if not devices:
        print("no input devices found")
    for d in devices:
        extra = ""
        if d["kind"] == "audio":
            extra = f"  {d['channels']} ch  {d['sample_rate']:.0f} Hz" + ("  (default)" if d["default"] else "")
        print(f"{d['kind']:6s} {d['index']:3d}  {d['name']}{extra}")
    return 0


def _config_flags(after_command: bool) -> argparse.ArgumentParser:
    """--config and --set, for the main parser and again for each subcommand, so that both
    `fdrl --set k=v replay f.wav` and `fdrl replay f.wav --set k=v` work.

    argparse parses a subcommand's flags into a namespace of its own, whose values then replace the
    main parser's; so the copy after the subcommand stores under other names (`command_config`,
    `command_set`) and `_config` joins the two.
    """
    prefix = "command_" if after_command else ""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--config", dest=f"{prefix}config", type=Path, default=None, metavar="FILE",
                       help="a TOML file overriding config.toml (any subset of keys)")
    flags.add_argument("--set", dest=f"{prefix}set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config value (repeatable)")
    return flags


def _log_flags() -> argparse.ArgumentParser:
    """-v and --log-file, for the long jobs (train, tune-text, eval)."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("-v", "--verbose", action="store_true", help="log the details too (DEBUG)")
    flags.add_argument("--log-file", type=Path, metavar="FILE", help="also append the log, with times, to FILE")
    return flags


def _version() -> str:
    """This installation's version, read from the package metadata (so it is pyproject.toml's)."""
    from importlib import metadata
    try:
        return metadata.version("fdrl-stream")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


STRICT_HELP = (f"stop at the first line that cannot be used (exit 2); by default such a line is reported "
               f"with its line number and skipped, and the command exits {EXIT_SKIPPED} after its results")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fdrl", description="Real-time multimodal emotion recognition with FDRL.",
                                     parents=[_config_flags(after_command=False)])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.set_defaults(verbose=False, log_file=None)  # for the commands without _log_flags
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_flags, log_flags = _config_flags(after_command=True), _log_flags()

    p = sub.add_parser("train", parents=[config_flags, log_flags],
                       help="train an FDRL checkpoint (speaker-independent CV and ablation optional)")
    p.add_argument("--ravdess", type=Path, help="RAVDESS root with Actor_NN folders")
    p.add_argument("--goemotions", type=Path, help="GoEmotions folder with train.tsv (dev.tsv is scored)")
    p.add_argument("--iemocap", type=Path, help="IEMOCAP_full_release folder (leave-one-session-out CV)")
    p.add_argument("--tess", type=Path, help="TESS folder with OAF/ and YAF/")
    p.add_argument("--emovo", type=Path, help="EMOVO folder with f1 ... m3/ (Italian)")
    p.add_argument("--dailydialog", type=Path, help="DailyDialog folder with train/ (text-only rows, read with their context)")
    p.add_argument("--manifest", type=Path, action="append", default=[], help="a JSONL manifest (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/fdrl.safetensors"),
                   help="checkpoint to write, NAME.safetensors with its settings NAME.json (default runs/fdrl.safetensors)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--cv", nargs="?", const="speaker", choices=("speaker", "corpus"),
                   help="cross-validate before the final fit: by speaker (the default) or leave-one-corpus-out")
    p.add_argument("--ablation", action="store_true", help="CV of FDRL, each component removed, and the concat baseline")
    p.add_argument("--seeds", type=int, help="seeds per CV run (default: 3 with --ablation, 1 with --cv)")
    p.add_argument("--report", type=Path, help="write the full results as JSON here")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune-text", parents=[config_flags, log_flags],
                       help="fine-tune MiniLM's top layers on GoEmotions (encoders.text_tuned)")
    p.add_argument("--goemotions", type=Path, required=True, help="GoEmotions folder with train.tsv (dev.tsv is scored)")
    p.add_argument("--dailydialog", type=Path, help="also DailyDialog train (validation is scored), turns read with their context")
    p.add_argument("--dialogue-neutral", type=float, help="fraction of DailyDialog's neutral turns per epoch (overrides tune_text.dialogue_neutral)")
    p.add_argument("--out", type=Path, default=Path("runs/minilm.safetensors"),
                   help="safetensors file to write; the shipped layers are never overwritten "
                        "(use yours with --set encoders.text_tuned=FILE)")
    p.add_argument("--layers", type=int, help="top layers to tune, 1-6 (overrides tune_text.layers)")
    p.add_argument("--epochs", type=int, help="epochs (overrides tune_text.epochs)")
    p.add_argument("--balanced", action="store_true", help="class-balanced cross-entropy (tune_text.balanced = true)")
    p.add_argument("--seed", type=int, help="random seed (overrides tune_text.seed)")
    p.add_argument("--json", action="store_true", help="print the per-epoch results as JSON")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.set_defaults(func=cmd_tune_text)

    p = sub.add_parser("eval", parents=[config_flags, log_flags], help="score a checkpoint on a JSONL manifest")
    p.add_argument("--manifest", type=Path, required=True, help='JSONL: {"audio"|"text", "label", ["speaker", "video"]} per line')
    p.add_argument("--checkpoint", type=Path, help="default: paths.checkpoint in config.toml")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.add_argument("--plot", type=Path, help="write a confusion-matrix PNG (to exactly this file path)")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.set_defaults(func=cmd_eval)

    def session_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--jsonl", type=Path, help="write every event as one JSON object per line")
        p.add_argument("--plot", type=Path, help="draw the session's emotion timeline to a PNG at the end")
        p.add_argument("--checkpoint", type=Path, help="default: paths.checkpoint in config.toml")
        p.add_argument("--no-video", action="store_true", help="audio only: no camera / ignore the video track")
        p.add_argument("--record", type=Path, help="record the session (audio.wav, video.mp4, events.jsonl) to a new folder")

    stopping = ("Ctrl-C or SIGTERM ends the session cleanly within 2 s: what was said is labelled, the files are "
                "closed, the final stats printed, and the exit status is 130 (SIGINT) or 143 (SIGTERM). "
                "A second Ctrl-C ends it at once.")
    p = sub.add_parser("live", parents=[config_flags], description=stopping,
                       help="recognize emotions from the microphone (and webcam) live")
    p.add_argument("--device", help="input device index or name (see `fdrl devices`; default: the system default)")
    p.add_argument("--camera", type=int, default=0, help="camera index (default 0)")
    session_flags(p)
    p.set_defaults(func=cmd_live)

    p = sub.add_parser("replay", parents=[config_flags], description=stopping,
                       help="run a recorded session or an audio/video file through the pipeline")
    p.add_argument("path", type=Path, help="an audio or video file, or a folder written by `fdrl live --record`")
    p.add_argument("--video", type=Path, help="a separate video file to pair with the audio")
    p.add_argument("--pace", choices=("realtime", "fast"), default="fast",
                   help="realtime: fed as if live (latency means what it means live); fast: as fast as compute allows, deterministic")
    session_flags(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("serve", parents=[config_flags],
                       description="Many live streams over WebSocket at /ws, and a browser page at /. "
                                   "SIGINT or SIGTERM closes every connection with its final stats within 2 s.",
                       help="serve live emotion recognition over WebSocket (and a browser page)")
    p.add_argument("--host", help="address to listen on (overrides serve.host; default loopback); "
                                  "any other needs a token")
    p.add_argument("--port", type=int, help="port (overrides serve.port; 0 = any free port)")
    p.add_argument("--token", help="secret clients must send (Authorization: Bearer or ?token=); default $FDRL_TOKEN")
    p.add_argument("--origin", action="append", default=[], metavar="URL",
                   help="a browser origin allowed to connect, e.g. https://app.example.com (repeatable; adds to serve.origins)")
    p.add_argument("--certfile", type=Path, help="TLS certificate (PEM), with --keyfile: wss:// and https://")
    p.add_argument("--keyfile", type=Path, help="TLS private key (PEM)")
    p.add_argument("--checkpoint", type=Path, help="default: paths.checkpoint in config.toml")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("predict", parents=[config_flags, log_flags],
                       help="label every utterance of audio/video files or folders, no labels needed, into one file")
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                   help="audio or video files, or folders (searched recursively for media files)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help=".csv (one row per utterance, a column per class score), .jsonl (the event schema), "
                        ".srt or .vtt (subtitles, one input file)")
    p.add_argument("--checkpoint", type=Path, help="default: paths.checkpoint in config.toml")
    p.add_argument("--no-video", action="store_true", help="audio only: ignore the video tracks")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray: alone, a local Ray started for the job; 'auto' or HOST:PORT joins a cluster "
                        "(pip install 'fdrl-stream[ray]')")
    p.add_argument("--ray-workers", type=int, metavar="N", help="Ray actors (default: as many as the cluster's CPUs hold)")
    p.add_argument("--ray-cpus", type=float, default=1.0, metavar="N", help="CPUs per Ray actor (default 1)")
    p.add_argument("--ray-gpus", type=float, default=0.0, metavar="N", help="GPUs per Ray actor (default 0: CPU)")
    p.add_argument("--strict", action="store_true",
                   help=f"a file that cannot be read fails the job (exit 2, no output written); by default it is "
                        f"reported, the others are labelled, and the command exits {EXIT_SKIPPED}")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("devices", help="list audio input devices and cameras")
    p.set_defaults(func=cmd_devices)
    return parser


def os_error_message(e: OSError) -> str:
    """One line for an OSError that reached the command (a full disk, no permission, a missing folder,
    a vanished device): the file, the system's reason and the fix for that errno."""
    from fdrl.outputs import OutputError, os_reason
    if isinstance(e, OutputError):  # written for the user already: the file, the reason and the fix
        return str(e)
    files = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{files}: {os_reason(e)}" if files else os_reason(e)


def _end_quietly_when_stdout_closes() -> None:
    """Let a closed stdout end the process the way it ends `cat` or `grep`: by SIGPIPE, with no
    message, status 141 in the shell (`fdrl replay talk.wav | head -1`).

    Python ignores SIGPIPE so that writes raise BrokenPipeError instead, which here would surface as
    a traceback from whichever thread or coroutine wrote next. Ending at once loses nothing written:
    the recording and the JSONL file are valid at every moment (stream/record.py). Only for the
    command itself: a program calling `main` keeps Python's behaviour for its own pipes.
    """
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def _paths_given(args: argparse.Namespace) -> list[Path]:
    """Every path on the command line but the log file: the files and folders the command reads or writes."""
    values = [v for k, v in vars(args).items() if k != "log_file"]
    return [p for v in values for p in (v if isinstance(v, list) else [v]) if isinstance(p, Path)]


def main(argv: Sequence[str] | None = None) -> int:
    from fdrl.progress import setup_logging
    from stream import process
    command = argv is None  # run as the `fdrl` command, not called inside another program
    process.configure(reexec=command)
    if command:
        _end_quietly_when_stdout_closes()
    args = build_parser().parse_args(argv)
    try:
        if args.log_file is not None:  # appended to from the start: it must not be any other path of the command
            from fdrl.outputs import check_outputs
            check_outputs({"--log-file": args.log_file}, _paths_given(args), streams={"--log-file"})
        setup_logging(args.verbose, args.log_file)
        return args.func(args)
    except UserError as e:
        print(f"fdrl: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, a device that vanished: not a bug, still one line
        print(f"fdrl: error: {os_error_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fdrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
