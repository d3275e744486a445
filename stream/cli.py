"""The `fdrl` command: a thin layer over the library. Each subcommand parses flags and calls one function."""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from fdrl.errors import UserError

if TYPE_CHECKING:
    from stream.events import Stats


def _config(args: argparse.Namespace, extra: Sequence[str] = ()):
    from fdrl import config
    return config.load(args.config, [*args.set, *extra])


def cmd_train(args: argparse.Namespace) -> int:
    from fdrl.train import Corpora, train_command
    overrides = [f"train.epochs={args.epochs}"] if args.epochs else []
    cfg = _config(args, overrides)
    corpora = Corpora(args.ravdess, args.goemotions, args.iemocap, args.manifest)
    result = train_command(cfg, corpora, args.out, cv=args.cv, ablation=args.ablation, seeds=args.seeds, report=args.report)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, default=float)[:2000] if args.json else f"saved {args.out}")
    return 0


def cmd_tune_text(args: argparse.Namespace) -> int:
    from fdrl.tune_text import TuneOptions, tune_command
    cfg = _config(args)
    out = args.out or cfg.resolve(cfg.encoders.text_tuned or "models/minilm-goemotions.safetensors")
    options = TuneOptions(layers=args.layers, epochs=args.epochs, balanced=args.balanced, seed=args.seed)
    result = tune_command(cfg, args.goemotions, out, options)
    print(json.dumps(result) if args.json else f"saved {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fdrl.evaluate import evaluate
    cfg = _config(args)
    result = evaluate(args.manifest, cfg, args.checkpoint, args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        _print_eval(result)
    return 0


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


def _session(args: argparse.Namespace, cfg, source, live: bool) -> int:
    """Run a session; the first SIGINT or SIGTERM stops it cleanly (see stream/session.py), a second kills it.

    A stopped session ends the process with status 128 + the signal number (130 after Ctrl-C, 143
    after SIGTERM), the shell's convention for "ended by a signal", once its files are closed and its
    Stats printed; it does not return to the caller.
    """
    import asyncio

    from stream.session import SessionOptions
    from stream.ui import format_stats
    options = SessionOptions(live=live, jsonl=args.jsonl, record=args.record, plot=args.plot,
                             checkpoint=args.checkpoint, face=not args.no_video)
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
    # alone take half a second), so the process ends well within 2 s of the signal.
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
    return _session(args, cfg, source, live=args.pace == "realtime")


def cmd_live(args: argparse.Namespace) -> int:
    from stream.session import merge
    from stream.sources import CameraSource, MicrophoneSource
    cfg = _config(args)
    device = int(args.device) if args.device is not None and args.device.isdigit() else args.device
    mic = MicrophoneSource(device)
    source = mic if args.no_video else merge(mic, CameraSource(args.camera, fps=max(cfg.face.rate_hz, 10.0)))
    return _session(args, cfg, source, live=True)


def cmd_devices(args: argparse.Namespace) -> int:
    from stream.sources import list_devices
    devices = list_devices()
    if not devices:
        print("no input devices found")
    for d in devices:
        extra = f"  {d.get('channels', '')} ch  {d.get('default_samplerate', '')} Hz" if d["kind"] == "audio" else ""
        print(f"{d['kind']:6s} {d['index']:3d}  {d['name']}{extra}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fdrl", description="Real-time multimodal emotion recognition with FDRL.")
    parser.add_argument("--config", type=Path, default=None, help="a TOML file overriding config.toml (any subset of keys)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train an FDRL checkpoint (speaker-independent CV and ablation optional)")
    p.add_argument("--ravdess", type=Path, help="RAVDESS root with Actor_NN folders")
    p.add_argument("--goemotions", type=Path, help="GoEmotions folder with train.tsv (dev.tsv is scored)")
    p.add_argument("--iemocap", type=Path, help="IEMOCAP_full_release folder (leave-one-session-out CV)")
    p.add_argument("--manifest", type=Path, action="append", default=[], help="a JSONL manifest (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/fdrl.pt"), help="checkpoint to write (default runs/fdrl.pt)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--cv", action="store_true", help="report speaker-independent cross-validation before the final fit")
    p.add_argument("--ablation", action="store_true", help="CV of FDRL, each component removed, and the concat baseline")
    p.add_argument("--seeds", type=int, help="seeds per CV run (default: 3 with --ablation, 1 with --cv)")
    p.add_argument("--report", type=Path, help="write the full results as JSON here")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune-text", help="fine-tune MiniLM's top layers on GoEmotions (encoders.text_tuned)")
    p.add_argument("--goemotions", type=Path, required=True, help="GoEmotions folder with train.tsv (dev.tsv is scored)")
    p.add_argument("--out", type=Path, help="safetensors file to write (default: encoders.text_tuned)")
    p.add_argument("--layers", type=int, default=2, help="top layers to tune, 1-6 (default 2)")
    p.add_argument("--epochs", type=int, default=3, help="epochs (default 3)")
    p.add_argument("--balanced", action="store_true", help="class-balanced cross-entropy (default: plain)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the per-epoch results as JSON")
    p.set_defaults(func=cmd_tune_text)

    p = sub.add_parser("eval", help="score a checkpoint on a JSONL manifest")
    p.add_argument("--manifest", type=Path, required=True, help='JSONL: {"audio"|"text", "label", ["speaker", "video"]} per line')
    p.add_argument("--checkpoint", type=Path, help="default: paths.checkpoint in config.toml")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.add_argument("--plot", type=Path, help="write a confusion-matrix PNG")
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
    p = sub.add_parser("live", help="recognize emotions from the microphone (and webcam) live", description=stopping)
    p.add_argument("--device", help="input device index or name (see `fdrl devices`; default: the system default)")
    p.add_argument("--camera", type=int, default=0, help="camera index (default 0)")
    session_flags(p)
    p.set_defaults(func=cmd_live)

    p = sub.add_parser("replay", help="run a recorded session or an audio/video file through the pipeline",
                       description=stopping)
    p.add_argument("path", type=Path, help="an audio or video file, or a folder written by `fdrl live --record`")
    p.add_argument("--video", type=Path, help="a separate video file to pair with the audio")
    p.add_argument("--pace", choices=("realtime", "fast"), default="fast",
                   help="realtime: fed as if live (latency means what it means live); fast: as fast as compute allows, deterministic")
    session_flags(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("devices", help="list audio input devices and cameras")
    p.set_defaults(func=cmd_devices)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from stream import process
    process.configure(reexec=argv is None)  # re-execute only as the `fdrl` command, not inside a caller
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"fdrl: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, a device that vanished: not a bug, still one line
        print(f"fdrl: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fdrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
