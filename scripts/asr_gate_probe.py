"""Measure the ASR's own confidence signals on English and Italian speech, to set the text gate.

The bundled Whisper is English-only: on Italian (EMOVO) it invents English words. Whether a
transcript may reach the text branch is decided from what the ASR says about itself
(fdrl/asr_gate.py); this script measures those signals on random clips of each corpus, through
the same VAD crop and Whisper pass as training and live use, and prints how well each threshold
separates the English corpora (RAVDESS, TESS: text should be kept) from the Italian one (EMOVO:
text should be dropped).

    .venv/bin/python scripts/asr_gate_probe.py ../shared/data --per-corpus 100 --out runs/asr_signals.jsonl
    .venv/bin/python scripts/asr_gate_probe.py ../shared/data --set asr.beam_size=1 --out runs/asr_signals-beam1.jsonl
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not installed: the checkout's
from bench.latency import word_error_rate
from fdrl import config
from fdrl.asr_gate import Gate, decide, signals
from fdrl.data import RAVDESS_STATEMENTS, load_emovo, load_ravdess, load_tess
from fdrl.features import FeatureExtractor

SIGNALS = ("avg_logprob", "mean_word_prob", "no_speech_prob", "compression_ratio")


def reference(corpus: str, file: str) -> str | None:
    """What was said in an English clip (RAVDESS names its statement, TESS its word); None for EMOVO."""
    stem = Path(file).stem
    if corpus == "ravdess":
        return RAVDESS_STATEMENTS[stem.split("-")[4]]
    return f"say the word {stem.split('_')[1]}" if corpus == "tess" else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="the shared data folder (ravdess/, tess/, emovo/)")
    ap.add_argument("--per-corpus", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="JSONL: one line of signals per clip")
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value (e.g. asr.beam_size=5)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    corpora = {"ravdess": load_ravdess(args.data / "ravdess"), "tess": load_tess(args.data / "tess"),
               "emovo": load_emovo(args.data / "emovo")}
    cfg = config.load(overrides=args.set)
    extractor = FeatureExtractor(cfg, "cpu", cache=False)
    gate = Gate.from_config(cfg)
    rows = []
    for name, items in corpora.items():
        for it in rng.sample(items, min(args.per_corpus, len(items))):
            audio, after = extractor.speech_and_after(it)  # as training transcribes it
            [(_, transcript)] = extractor.whisper.process([audio], after=[after])
            rows.append({"corpus": name, "speaker": it.speaker, "label": it.label, "file": it.audio.name,
                         "seconds": round(len(audio) / 16000, 2), "text": transcript.text,
                         "kept": decide(transcript, gate) is None, **signals(transcript)})
            print(name, json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summarize(rows)


def summarize(rows: list[dict]) -> None:
    """Per signal: its quartiles per corpus, and the best single threshold English vs Italian."""
    english = [r for r in rows if r["corpus"] != "emovo" and r["n_words"]]
    italian = [r for r in rows if r["corpus"] == "emovo" and r["n_words"]]
    for key in SIGNALS:
        for name in ("ravdess", "tess", "emovo"):
            v = [r[key] for r in rows if r["corpus"] == name and r["n_words"]]
            print(f"{key:18s} {name:8s} n={len(v):3d} quartiles {np.percentile(v, [10, 25, 50, 75, 90]).round(3).tolist()}")
        e, i = np.array([r[key] for r in english]), np.array([r[key] for r in italian])
        best = max(((np.mean(e >= t) + np.mean(i < t)) / 2, t) for t in np.unique(np.concatenate([e, i])))
        flip = max(((np.mean(e <= t) + np.mean(i > t)) / 2, t) for t in np.unique(np.concatenate([e, i])))
        print(f"{key:18s} keep if >= {best[1]:.3f}: balanced accuracy {best[0]:.3f}; keep if <= {flip[1]:.3f}: {flip[0]:.3f}")
    print("no words:", {name: sum(1 for r in rows if r["corpus"] == name and not r["n_words"]) for name in ("ravdess", "tess", "emovo")})
    for name in ("ravdess", "tess", "emovo"):
        mine = [r for r in rows if r["corpus"] == name]
        wer = (f"WER {word_error_rate([reference(name, r['file']) for r in mine], [r['text'] for r in mine]):.1%}, "
               if name != "emovo" else "")
        print(f"{name:8s} n={len(mine):3d} {wer}transcripts kept by the gate {np.mean([r['kept'] for r in mine]):.1%}")


if __name__ == "__main__":
    main()
