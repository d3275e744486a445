"""What the user sees: a Rich live view on a terminal, one plain line per event otherwise.

The view is split in two on purpose. `ViewState` is plain data that `apply(event)` updates in
O(1), so the consumer of the pipeline's events never waits on drawing. `render()` turns a state
into Rich renderables and is called by a separate timer at a few Hz, so a burst of events costs
one redraw, and a slow terminal slows the redraw, never the pipeline.

Terminal writes happen on a worker thread: a terminal or pipe that stops reading blocks that
thread, never the event loop, so live sources keep running (and drop, counted) instead of piling
up callbacks behind a blocked loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import AsyncIterator, Awaitable, Callable, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from fdrl.calibration import UNCERTAIN
from fdrl.labels import CANONICAL
from stream.events import Error, Event, FaceUpdate, Fallback, Level, SpeechDiscarded, SpeechStarted, Stats, Utterance

# One colour per canonical label, as hex so matplotlib (stream/plot.py) can use the same map.
LABEL_COLOURS: dict[str, str] = {
    "neutral": "#9e9e9e",
    "happiness": "#f2c12e",
    "sadness": "#4a7bd0",
    "anger": "#e0443e",
    "fear": "#9b59b6",
    "disgust": "#4caf50",
    "surprise": "#f08a24",
}
UNKNOWN_COLOUR = "#bdbdbd"  # labels outside the canonical set (a custom checkpoint)

LEVEL_FLOOR_DB = -60.0  # the meter's empty end; quieter than this is silence for the eye


def label_colour(label: str | None) -> str:
    """The hex colour of `label`; one grey for anything not in the canonical set."""
    return LABEL_COLOURS.get(label or "", UNKNOWN_COLOUR)


def level_fraction(rms_db: float, floor_db: float = LEVEL_FLOOR_DB) -> float:
    """Map an RMS level in dBFS onto 0..1 for the meter (floor_db -> 0, 0 dB -> 1)."""
    return min(1.0, max(0.0, (rms_db - floor_db) / -floor_db))


def bar(fraction: float, width: int, colour: str) -> Text:
    """A fixed-width horizontal bar; fixed width keeps columns aligned while values change."""
    filled = round(min(1.0, max(0.0, fraction)) * width)
    return Text.assemble(("█" * filled, colour), ("░" * (width - filled), "grey30"))


def ordered_labels(scores: dict[str, float]) -> list[str]:
    """Canonical labels first, in canonical order, then any others, so rows never jump around."""
    known = [name for name in CANONICAL if name in scores]
    return known + sorted(name for name in scores if name not in CANONICAL)


@dataclass
class ViewState:
    """Everything the live view shows, updated by `apply`; no Rich objects, so it is easy to test."""

    device: str = ""
    max_transcript: int = 8
    rms_db: float = LEVEL_FLOOR_DB
    speaking: bool = False
    label: str | None = None                       # current emotion (latest utterance); "uncertain" below the threshold
    best_guess: str | None = None                  # its best label, also when `label` is "uncertain"
    text_dropped: str | None = None                # why its words did not count (None: they did, or none yet)
    scores: dict[str, float] = field(default_factory=dict)
    current: tuple[str, int] | None = None         # (stream, index) the current emotion comes from
    transcript: dict[tuple[str, int], Utterance] = field(default_factory=dict)
    face_seen: bool = False                        # any FaceUpdate at all (i.e. a camera is on)
    face_label: str | None = None
    face_score: float | None = None
    latency_last: float | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    stats: Stats | None = None
    errors: deque[Error] = field(default_factory=lambda: deque(maxlen=3))
    error_count: int = 0
    fallbacks: deque[Fallback] = field(default_factory=lambda: deque(maxlen=3))
    camera_lost: bool = False
    time: float = 0.0                              # latest stream time seen

    def apply(self, event: Event) -> None:
        """Fold one event into the state. Cheap: called for every event on the pipeline's loop."""
        if isinstance(event, Level):
            self.rms_db, self.speaking = event.rms_db, event.speaking
            self.time = max(self.time, event.time)
        elif isinstance(event, SpeechStarted):
            self.speaking = True
        elif isinstance(event, SpeechDiscarded):
            if event.index is None:  # the VAD closed it at once; a "no_speech" one comes later, mid-speech maybe
                self.speaking = False
            else:
                self._withdraw((event.stream, event.index))
        elif isinstance(event, Utterance):
            self._apply_utterance(event)
        elif isinstance(event, FaceUpdate):
            self.face_seen = True
            self.face_label = event.label
            self.face_score = (event.scores or {}).get(event.label) if event.label else None
        elif isinstance(event, Stats):
            self.stats = event
        elif isinstance(event, Error):
            self.errors.append(event)
            self.error_count += 1
        elif isinstance(event, Fallback):
            self.fallbacks.append(event)
            if event.stage == "device":  # the only device fallback is to the CPU
                self.device = "cpu"
            elif event.stage == "camera":
                self.camera_lost = True

    def _withdraw(self, key: tuple[str, int]) -> None:
        """A segment turned out not to be speech: its provisional line goes, and the headline with it."""
        self.transcript.pop(key, None)
        if self.current == key:
            newest = max(self.transcript.items(), key=lambda kv: kv[1].start, default=None)
            self.current = newest[0] if newest else None
            self._headline(newest[1] if newest else None)

    def _apply_utterance(self, u: Utterance) -> None:
        key = (u.stream, u.index)
        old = self.transcript.get(key)
        if old is not None and old.final and not u.final:
            return  # a late provisional never overwrites the final version
        self.transcript[key] = u  # a final replaces its provisional in place
        while len(self.transcript) > self.max_transcript:
            oldest = min(self.transcript, key=lambda k: self.transcript[k].start)
            del self.transcript[oldest]
        # The headline emotion follows the newest segment, not whichever event arrived last.
        if self.current is None or key[0] != self.current[0] or key[1] >= self.current[1]:
            self.current = key
            self._headline(u)
        if u.final and "end_to_label" in u.timings:  # latency of the label the user keeps
            self.latency_last = u.timings["end_to_label"]
            self.latencies.append(self.latency_last)
        self.time = max(self.time, u.end)

    def _headline(self, u: Utterance | None) -> None:
        """The emotion panel follows `u` (None: nothing to show)."""
        self.label = u.label if u else None
        self.best_guess = (u.best_guess or u.label) if u else None
        self.text_dropped = u.text_dropped if u else None
        self.scores = dict(u.scores) if u else {}

    @property
    def latency_p50(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None

    def lines(self) -> list[Utterance]:
        """The rolling transcript, oldest first."""
        return sorted(self.transcript.values(), key=lambda u: (u.start, u.stream))


class LiveView:
    """A `ViewState` plus its Rich rendering. `render()` is pure: it reads the state, never changes it."""

    def __init__(self, device: str = "", max_transcript: int = 8) -> None:
        self.state = ViewState(device=device, max_transcript=max_transcript)

    def apply(self, event: Event) -> None:
        self.state.apply(event)

    def render(self) -> RenderableType:
        s = self.state
        top = Table.grid(expand=True, padding=(0, 1))
        top.add_column(ratio=2)
        top.add_column(ratio=3)
        top.add_row(_input_panel(s), _emotion_panel(s))
        return Group(top, _transcript_panel(s), _status_line(s), *_fallback_lines(s), *_error_lines(s))


def _input_panel(s: ViewState) -> Panel:
    rows = Table.grid(padding=(0, 1))
    rows.add_column(style="bold", no_wrap=True)
    rows.add_column(no_wrap=True)
    meter_colour = "green" if s.speaking else "grey62"
    rows.add_row("level", Text.assemble(bar(level_fraction(s.rms_db), 16, meter_colour), f" {s.rms_db:5.0f} dB"))
    vad = Text("● speaking", style="bold green") if s.speaking else Text("○ silent", style="grey62")
    rows.add_row("voice", vad)
    rows.add_row("face", _face_text(s))
    rows.add_row("device", Text(s.device or "?"))
    return Panel(rows, title="input", title_align="left", border_style="grey42")


def _face_text(s: ViewState) -> Text:
    if s.camera_lost:
        return Text("camera lost", style="yellow")
    if not s.face_seen:
        return Text("no camera", style="grey62")
    if s.face_label is None:
        return Text("no face", style="grey62")
    score = f" {s.face_score:.2f}" if s.face_score is not None else ""
    return Text(f"{s.face_label}{score}", style=label_colour(s.face_label))


def _emotion_panel(s: ViewState) -> Panel:
    if s.label is None:
        body: RenderableType = Text("waiting for speech…", style="grey62 italic")
    else:
        rows = Table.grid(padding=(0, 1))
        rows.add_column(no_wrap=True, min_width=10)
        rows.add_column(no_wrap=True)
        rows.add_column(no_wrap=True, justify="right")
        for name in ordered_labels(s.scores):
            p = s.scores[name]
            style = f"bold {label_colour(name)}" if name == s.best_guess else label_colour(name)
            rows.add_row(Text(name, style=style), bar(p, 24, label_colour(name)), f"{p:.2f}")
        body = rows
    title = Text.assemble("emotion: ", (s.label or "—", f"bold {label_colour(s.label)}"))
    if s.label == UNCERTAIN and s.best_guess:
        title.append(f" (best guess {s.best_guess})", style="grey62")
    if s.text_dropped:
        title.append(f" · {modality_note(s.text_dropped)}", style="grey62 italic")
    return Panel(body, title=title, title_align="left", border_style=label_colour(s.label) if s.label else "grey42")


def _transcript_panel(s: ViewState) -> Panel:
    lines = s.lines()
    if not lines:
        body: RenderableType = Text("(nothing said yet)", style="grey62 italic")
    else:
        body = Group(*(_transcript_line(u) for u in lines))
    return Panel(body, title="transcript", title_align="left", border_style="grey42")


def _transcript_line(u: Utterance) -> Text:
    colour = label_colour(u.label)
    style = colour if u.final else f"{colour} dim italic"
    text = u.text.strip() or "…"
    line = Text.assemble((f"{u.start:6.1f}s ", "grey62"), (f"{u.label:<10}", f"bold {style}"), (text, style))
    if not u.final:
        line.append(" (provisional)", style="grey50 italic")
    elif u.text_dropped:
        line.append(f" ({modality_note(u.text_dropped)})", style="grey50 italic")
    return line


def modality_note(text_dropped: str) -> str:
    """Why a label came from the voice alone, in words (`Utterance.text_dropped`)."""
    return {"low_asr_confidence": "voice only: the ASR was unsure of the words",
            "no_words": "voice only: no words"}.get(text_dropped, f"voice only: {text_dropped}")


def _fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f} s"


def _status_line(s: ViewState) -> Text:
    parts = [f"latency {_fmt_s(s.latency_last)} (p50 {_fmt_s(s.latency_p50)})"]
    st = s.stats
    if st is None:
        parts.append("no stats yet")
    else:
        parts += [f"audio dropped {st.audio_dropped_s:.1f} s", f"frames dropped {st.frames_dropped}",
                  f"overflows {st.overflows}", f"errors {st.errors}", f"compute {st.compute_ratio:.2f}x"]
        if st.queue_depths:
            parts.append("queues " + " ".join(f"{k}={v}" for k, v in st.queue_depths.items()))
    warn = st is not None and (st.audio_dropped_s > 0 or st.frames_dropped or st.overflows or st.errors)
    return Text(" · ".join(parts), style="yellow" if warn else "grey62")


def _fallback_lines(s: ViewState) -> list[Text]:
    return [Text(f"warning at {f.time:.1f} s: {f.message}", style="yellow") for f in s.fallbacks]


def _error_lines(s: ViewState) -> list[Text]:
    return [Text(f"error in {e.stage} at {e.time:.1f} s: {e.message}", style="red") for e in s.errors]


async def run_live(events: AsyncIterator[Event], console: Console, refresh_hz: float = 8.0, device: str = "") -> None:
    """Show `events` in one `rich.live.Live` display until the iterator ends.

    This coroutine consumes events and only updates the state; a separate task redraws at
    `refresh_hz`, skipping redraws when nothing changed. Both run on the caller's event loop, so
    the state needs no lock; the renderable is built there too, and only written out on a thread,
    so the pipeline is never held up by the terminal.
    """
    view = LiveView(device=device)
    dirty = asyncio.Event()

    with Live(view.render(), console=console, auto_refresh=False) as live:
        async def redraw() -> None:
            while True:
                await asyncio.sleep(1.0 / refresh_hz)
                if dirty.is_set():
                    dirty.clear()
                    # Built here (a snapshot of the state), written there: a stalled terminal only
                    # delays the next redraw. Live's own lock orders this against the final update.
                    await asyncio.to_thread(live.update, view.render(), refresh=True)

        timer = asyncio.create_task(redraw())
        try:
            async for event in events:
                view.apply(event)
                dirty.set()
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
            live.update(view.render(), refresh=True)  # the final state stays on screen


def format_utterance(u: Utterance) -> str:
    """`[  3.20-  5.10] anger      0.81  "i told you not to do that"` (+ ` (provisional)`)."""
    score = u.scores.get(u.best_guess or u.label, float("nan"))
    line = f'[{u.start:6.2f}-{u.end:6.2f}] {u.label:<10} {score:.2f}  "{u.text.strip()}"'
    if u.label == UNCERTAIN and u.best_guess:
        line += f" (best guess {u.best_guess})"
    if not u.final:
        return line + " (provisional)"
    return line + f" ({modality_note(u.text_dropped)})" if u.text_dropped else line


def format_stats(st: Stats) -> str:
    return (f"stats [{st.stream}] at {st.time:.1f} s: {st.utterances} utterances, {st.segments_closed} segments, {st.no_speech} without speech, "
            f"{st.errors} errors, {st.audio_dropped_s:.1f} s audio dropped, {st.frames_dropped} frames dropped, "
            f"{st.overflows} overflows, compute {st.compute_ratio:.2f}x")


async def run_plain(events: AsyncIterator[Event], out: TextIO) -> None:
    """One line per meaningful event, for pipes and logs: utterances, face changes, warnings, errors, final stats.

    Level and SpeechStarted events are skipped (they are for the live meter), and so are segments
    the VAD discarded at once; a withdrawn provisional label gets a "no speech" line. A face line is
    written only when the face label changes; stats are written once per stream at the end.
    Each line is flushed, so `fdrl live | tee log` shows results as they come. Lines are written
    on a thread: a reader that stops reading holds up this consumer (and so the pipeline, which
    then slows a replay or drops live input, counted), never the event loop itself.
    """
    faces: dict[str, str | None] = {}
    last_stats: dict[str, Stats] = {}

    def write(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    async def emit(line: str) -> None:
        await asyncio.to_thread(write, line)

    async for event in events:
        if isinstance(event, Utterance):
            await emit(format_utterance(event))
        elif isinstance(event, FaceUpdate):
            if event.stream not in faces or faces[event.stream] != event.label:
                faces[event.stream] = event.label
                await emit(f"[{event.time:6.2f}       ] face: {event.label or 'none'}")
        elif isinstance(event, SpeechDiscarded) and event.index is not None:
            await emit(f"[{event.start:6.2f}-{event.end:6.2f}] no speech")
        elif isinstance(event, Fallback):
            await emit(f"[{event.time:6.2f}       ] warning: {event.message}")
        elif isinstance(event, Error):
            await emit(f"[{event.time:6.2f}       ] error in {event.stage}: {event.message}")
        elif isinstance(event, Stats):
            last_stats[event.stream] = event
    for st in last_stats.values():
        await emit(format_stats(st))


def pick_view(console: Console, refresh_hz: float = 8.0, device: str = "") -> Callable[[AsyncIterator[Event]], Awaitable[None]]:
    """The live view on a terminal, plain lines otherwise (a pipe, a file, CI logs)."""
    if console.is_terminal:
        return partial(run_live, console=console, refresh_hz=refresh_hz, device=device)
    return partial(run_plain, out=console.file)
