"""The critical path: from the true end of each spoken sentence to its final label, with the words
the transcript got right, for several configurations taking turns on the same files.

    .venv/bin/python -m bench.latency [--rounds 2] [--variant "SECTION.KEY=VALUE[,...]" ...] [--out FILE]

Files (espeak-ng, made once and cached under bench/.cache/):

* `plain`: bench.run's 20 sentences, 1.5 s apart, alternating two voices;
* `hesitant`: 10 sentences each spoken as 2-3 phrases with 300-400 ms pauses between them, where a
  speaker would hesitate: a pause must not split a sentence, and work started at a pause
  (`vad.early_ms`) is spent for nothing when the speech goes on.

Each variant (config overrides; the first is the baseline the ratios divide by) replays every file at
realtime pace as a live stream; variants take turns, `--rounds` times, so a neighbour's load skews
all alike. Per variant and file: sentences with exactly one final label, extra labels (a sentence
split in two, or noise), true end → final label p50 / p95 (the end of the last voiced sample
espeak wrote, so the VAD's own lag counts), VAD end → final label, segment closed → final label,
early passes used / done, and the word error rate of the final transcripts against the sentences
(jiwer, lower case, punctuation removed; numerals count as words, "10" against "ten" is an error).
The JSON report goes to stdout (or --out), then a Markdown table. Timings mean something only on an
otherwise idle machine: the load average at the start is in the report.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from stream import process

process.configure(reexec=False)  # as the `fdrl` command does, before torch is imported

import jiwer
import numpy as np

from bench.run import DEFAULT_CACHE, SENTENCES, VOICES, Dist, dist, log, synthesize
from fdrl import config
from fdrl.audio import SAMPLE_RATE, write_wav
from stream.events import Utterance
from stream.pipeline import Recognizer
from stream.sources import FileSource

# Sentences spoken in phrases, a hesitation between them.
HESITANT = (
    ("I was thinking", "that we could go", "to the beach tomorrow"),
    ("the problem is", "nobody told me about the meeting"),
    ("well", "I am not really sure", "what you mean"),
    ("she said", "that the train was late again"),
    ("if you have time", "please call me back this evening"),
    ("the report", "is almost finished", "but not quite"),
    ("my sister", "bought a new car last week"),
    ("we tried everything", "and it still does not work"),
    ("to be honest", "I liked the first version better"),
    ("after lunch", "we walked along the river", "for an hour"),
)
LEAD_S, GAP_S = 0.5, 1.5                       # silence before the first sentence, and after each
HESITATION_S = (0.3, 0.4)                      # pause between the phrases of one sentence, drawn uniformly


@dataclass
class SpokenFile:
    name: str
    path: str
    duration_s: float
    spans: list[list[float]]   # [first, last] voiced second of each sentence
    sentences: list[str]


def make_file(name: str, sentences: Sequence[Sequence[str]], cache_dir: Path) -> SpokenFile:
    """Sentences (each a list of phrases) with voices alternating; cached by recipe."""
    recipe = [name, [list(s) for s in sentences], VOICES, LEAD_S, GAP_S, HESITATION_S]
    key = hashlib.blake2b(json.dumps(recipe).encode(), digest_size=6).hexdigest()
    wav, meta = cache_dir / f"{name}-{key}.wav", cache_dir / f"{name}-{key}.json"
    if wav.is_file() and meta.is_file():
        return SpokenFile(**json.loads(meta.read_text()))
    rng = np.random.default_rng(0)
    parts, spans, t = [np.zeros(round(LEAD_S * SAMPLE_RATE), np.float32)], [], LEAD_S
    for k, phrases in enumerate(sentences):
        start = t
        for j, phrase in enumerate(phrases):
            if j:
                pause = np.zeros(round(rng.uniform(*HESITATION_S) * SAMPLE_RATE), np.float32)
                parts.append(pause)
                t += len(pause) / SAMPLE_RATE
            audio = synthesize(phrase, VOICES[k % len(VOICES)])
            parts.append(audio)
            t += len(audio) / SAMPLE_RATE
        spans.append([round(start, 3), round(t, 3)])
        parts.append(np.zeros(round(GAP_S * SAMPLE_RATE), np.float32))
        t += GAP_S
    samples = np.concatenate(parts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_wav(wav, samples)
    spoken = SpokenFile(name, str(wav), round(len(samples) / SAMPLE_RATE, 3), spans, [" ".join(s) for s in sentences])
    meta.write_text(json.dumps(dataclasses.asdict(spoken)))
    return spoken


def test_files(cache_dir: Path) -> list[SpokenFile]:
    return [make_file("plain", [[s] for s in SENTENCES], cache_dir), make_file("hesitant", HESITANT, cache_dir)]


# -- scoring (pure) --------------------------------------------------------------------------------


@dataclass
class Score:
    sentences: int
    one_label: int              # sentences with exactly one final label
    extra: int                  # final labels beyond one per sentence (splits, noise)
    missed: int                 # sentences without a final label
    true_end_to_label: Dist | None   # last voiced sample of the sentence → its (last) final label
    end_to_label: Dist | None        # the VAD's end of speech → final label
    compute: Dist | None             # segment closed → final label
    early_used: int             # finals whose Whisper work was done during the hangover
    wer: float


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """WER of the hypotheses, joined in order, against the references, joined (a split sentence is not an error)."""
    return round(float(jiwer.wer(normalize(" ".join(references)), normalize(" ".join(hypotheses)) or "-")), 4)


def score(finals: Sequence[Utterance], spans: Sequence[Sequence[float]], sentences: Sequence[str]) -> Score:
    """Each final label belongs to the sentence its segment overlaps most (none: an extra label)."""
    owner: dict[int, list[Utterance]] = {}
    extra = 0
    for u in finals:
        overlaps = [min(u.end, e) - max(u.start, s) for s, e in spans]
        k = int(np.argmax(overlaps))
        if overlaps[k] <= 0:
            extra += 1
            continue
        owner.setdefault(k, []).append(u)
    extra += sum(len(us) - 1 for us in owner.values())
    last = [max(us, key=lambda u: u.end) for us in owner.values()]
    true_end = [u.end + u.timings["end_to_label"] - spans[k][1] for k, u in zip(owner, last) if "end_to_label" in u.timings]
    return Score(len(spans), sum(len(us) == 1 for us in owner.values()), extra, len(spans) - len(owner), dist(true_end),
                 dist([u.timings["end_to_label"] for u in finals if "end_to_label" in u.timings]),
                 dist([u.timings["compute"] for u in finals]), sum("early" in u.timings for u in finals),
                 word_error_rate(sentences, [u.text for u in finals]))


# -- runs ------------------------------------------------------------------------------------------


@dataclass
class Run:
    variant: str
    file: str
    round: int
    score: Score
    early_done: int             # early passes the worker ran during this replay


async def replay(rec: Recognizer, spoken: SpokenFile) -> list[Utterance]:
    return [e async for e in rec.run(FileSource(spoken.path, pace="realtime"), live=True)
            if isinstance(e, Utterance) and e.final]


async def measure(variants: Sequence[str], files: Sequence[SpokenFile], rounds: int, checkpoint: Path | None) -> list[Run]:
    runs = []
    async with contextlib.AsyncExitStack() as stack:
        recognizers = [await stack.enter_async_context(Recognizer(config.load(overrides=[s for s in v.split(",") if s]),
                                                                  checkpoint, face=False)) for v in variants]
        for k in range(rounds):
            for spoken in files:
                for v, rec in zip(variants, recognizers):
                    log(f"round {k + 1}/{rounds}: {spoken.name} ({spoken.duration_s:.0f} s), {v or 'defaults'}")
                    done = rec.engine.ahead.stored  # type: ignore[union-attr]
                    finals = await replay(rec, spoken)
                    runs.append(Run(v, spoken.name, k, score(finals, spoken.spans, spoken.sentences),
                                    rec.engine.ahead.stored - done))  # type: ignore[union-attr]
    return runs


def pooled(runs: Sequence[Run]) -> dict:
    """One variant on one file over all rounds: medians of the p50/p95s, sums of the counts."""
    def med(key: str, p: str) -> float | None:
        values = [getattr(getattr(r.score, key), p) for r in runs if getattr(r.score, key)]
        return round(float(np.median(values)), 1) if values else None
    return {"rounds": len(runs), "sentences": sum(r.score.sentences for r in runs),
            "one_label": sum(r.score.one_label for r in runs), "extra": sum(r.score.extra for r in runs),
            "missed": sum(r.score.missed for r in runs),
            **{f"{key}_{p}": med(key, f"{p}_ms") for key in ("true_end_to_label", "end_to_label", "compute") for p in ("p50", "p95")},
            "early_used": sum(r.score.early_used for r in runs), "early_done": sum(r.early_done for r in runs),
            "wer": round(float(np.mean([r.score.wer for r in runs])), 4)}


def to_markdown(summary: dict[str, dict[str, dict]], variants: Sequence[str]) -> str:
    lines = ["| file | variant | one label / sentences | extra | true end → final p50 / p95 | ratio to first | "
             "VAD end → final p50 | closed → final p50 | early passes used / done | WER |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, per in summary.items():
        base = per[variants[0]]["true_end_to_label_p50"]
        for v in variants:
            s = per[v]
            ratio = f"{s['true_end_to_label_p50'] / base:.2f}×" if base and s["true_end_to_label_p50"] else "—"
            lines.append(f"| {name} | {v or 'defaults'} | {s['one_label']} / {s['sentences']} | {s['extra']} | "
                         f"{s['true_end_to_label_p50']} / {s['true_end_to_label_p95']} ms | {ratio} | {s['end_to_label_p50']} ms | "
                         f"{s['compute_p50']} ms | {s['early_used']} / {s['early_done']} | {s['wer']:.1%} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", metavar="SETTINGS",
                   help='comma-separated config overrides, "" for the defaults; repeatable, the first is the baseline '
                        '(default: "vad.early_ms=0" and "")')
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, help="write the JSON report here")
    a = p.parse_args(argv)
    variants = a.variant if a.variant is not None else ["vad.early_ms=0", ""]
    load = os.getloadavg()
    files = test_files(a.cache_dir)
    runs = asyncio.run(measure(variants, files, a.rounds, a.checkpoint))
    summary = {f.name: {v: pooled([r for r in runs if r.file == f.name and r.variant == v]) for v in variants} for f in files}
    report = {"command": shlex.join(["python", "-m", "bench.latency", *(argv if argv is not None else sys.argv[1:])]),
              "loadavg_start": [round(x, 2) for x in load], "variants": variants, "summary": summary,
              "runs": [dataclasses.asdict(r) for r in runs]}
    text = json.dumps(report, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    else:
        print(text)
    print(to_markdown(summary, variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
