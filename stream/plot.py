"""The emotion timeline of a session as a PNG: what was said when, with which emotion and how sure.

Uses matplotlib's object API on an Agg canvas (no pyplot, no display, no global state), and the
label colours of the live view (`stream.ui.LABEL_COLOURS`), so the plot and the terminal agree.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fdrl.labels import CANONICAL
from fdrl.outputs import atomic_write
from stream.events import Utterance, event_from_json
from stream.ui import label_colour

SNIPPET_CHARS = 28  # transcript text per annotation; the full text is in events.jsonl


def _final_utterances(items: Iterable[Utterance | Mapping[str, Any]]) -> list[Utterance]:
    """Final utterances from events or their JSON dicts (other event types are ignored)."""
    out = []
    for item in items:
        if isinstance(item, Mapping):
            if item.get("type", "utterance") != "utterance":
                continue
            item = event_from_json({"type": "utterance", **item})
        if isinstance(item, Utterance) and item.final:
            out.append(item)
    return sorted(out, key=lambda u: u.start)


def _snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def plot_timeline(utterances: Sequence[Utterance | Mapping[str, Any]], path: str | Path,
                  labels: Sequence[str] = CANONICAL) -> Path:
    """Draw the final utterances as bars on a time axis and save a PNG to `path`.

    Each utterance is a bar from its start to its end, coloured by its label, as tall as the
    model's confidence in that label; its transcript is written above it. `labels` sets the
    legend (labels seen in the data but not listed are added to it).
    """
    path = Path(path)
    finals = _final_utterances(utterances)
    end = max((u.end for u in finals), default=1.0)
    width = min(30.0, max(8.0, 4.0 + end / 6.0))  # long sessions get a wider figure, within reason

    fig = Figure(figsize=(width, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for u in finals:
        confidence = float(u.scores.get(u.label, 0.0))
        colour = label_colour(u.label)
        span = max(u.end - u.start, 1e-3)
        ax.bar(u.start, 1.0, width=span, align="edge", color=colour, alpha=0.15, lw=0)  # the band
        ax.bar(u.start, confidence, width=span, align="edge", color=colour, edgecolor="white", lw=0.8)
        if u.text.strip():
            ax.annotate(_snippet(u.text), (u.start, confidence), xytext=(2, 4),
                        textcoords="offset points", rotation=35, ha="left", va="bottom", fontsize=8,
                        color="#333333", rotation_mode="anchor", annotation_clip=False)
    if not finals:
        ax.text(0.5, 0.5, "no final utterances", transform=ax.transAxes, ha="center", va="center",
                color="#777777")

    ax.set_xlim(0, end * 1.02)
    ax.set_ylim(0, 1.6)  # headroom for the rotated transcript snippets
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("confidence")
    ax.set_title("emotion timeline", loc="left")
    ax.grid(axis="y", color="#e0e0e0", lw=0.6)
    ax.set_axisbelow(True)
    ax.spines["left"].set_bounds(0, 1)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    legend_labels = list(labels) + sorted({u.label for u in finals} - set(labels))
    ax.legend(handles=[Patch(color=label_colour(name), label=name) for name in legend_labels],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=9)

    with atomic_write(path) as f:  # a failed save leaves any earlier plot, and no half-written PNG
        fig.savefig(f, format="png")
    return path
