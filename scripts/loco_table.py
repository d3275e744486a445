"""Several `scripts/loco.py` runs as one table: each recipe's mean ± std over seeds of the mean over
held-out corpora, for UAR, WAR and macro-F1 with the speaker known, UAR without it and UAR of the
voice alone (the words left out), and each held-out corpus's UAR (mean over seeds).

Runs are grouped by recipe: a file named `NAME-sSEED.npz` belongs to recipe NAME (the ablation in
the model card is five recipes, three seeds each). `--json` keeps every run's per-corpus scores.

    .venv/bin/python scripts/loco_table.py runs/abl/*-s?.npz --json models/ablation-loco.json
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from fdrl import metrics
from fdrl.train import mean_std

SCORES = {"UAR": ("speaker", metrics.uar), "WAR": ("speaker", metrics.war), "macro-F1": ("speaker", metrics.macro_f1),
          "UAR w/o speaker": ("no_speaker", metrics.uar), "UAR voice alone": ("audio", metrics.uar)}


def per_corpus(path: Path) -> dict[str, dict[str, float]]:
    """Each score in SCORES for each held-out corpus of one loco.py output."""
    run = np.load(path)
    y, corpus = run["y"], run["corpus"]
    out: dict[str, dict[str, float]] = {}
    for fold in sorted(int(k[len("val_"):]) for k in run.files if k.startswith("val_")):
        val = run[f"val_{fold}"]
        for name in sorted(set(corpus[val])):
            m = corpus[val] == name
            out[str(name)] = {score: round(fn(y[val][m], run[f"{cond}_{fold}"][m].argmax(1)), 4)
                              for score, (cond, fn) in SCORES.items()}
    return out


def cell(score: str, mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}" if score == "macro-F1" else f"{100 * mean:.1f} ± {100 * std:.1f} %"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="loco.py outputs named NAME-sSEED.npz")
    ap.add_argument("--json", type=Path, help="write every run's per-corpus scores here")
    args = ap.parse_args()
    for path in args.runs:
        if not path.is_file():
            ap.error(f"run not found: {path} (give loco.py's --out files)")
    if args.json and args.json.resolve() in {path.resolve() for path in args.runs}:
        ap.error(f"--json {args.json} is one of the runs it reads and would overwrite it: give another path")
    recipes: dict[str, dict[str, dict[str, dict[str, float]]]] = defaultdict(dict)
    for path in args.runs:
        match = re.fullmatch(r"(.+)-s(\d+)", path.stem)
        name, seed = (match.group(1), match.group(2)) if match else (path.stem, "0")
        recipes[name][seed] = per_corpus(path)
    corpora = sorted({c for runs in recipes.values() for run in runs.values() for c in run})
    print("| recipe | seeds | " + " | ".join([*SCORES, *(f"UAR {c}" for c in corpora)]) + " |")
    print("|---|---:|" + "---:|" * (len(SCORES) + len(corpora)))
    for name, runs in recipes.items():
        means = {score: mean_std([np.mean([r[c][score] for c in r]) for r in runs.values()]) for score in SCORES}
        held = [np.mean([r[c]["UAR"] for r in runs.values() if c in r]) for c in corpora]
        print(f"| {name} | {len(runs)} | " + " | ".join([*(cell(s, *means[s]) for s in SCORES),
                                                        *(f"{100 * u:.1f} %" for u in held)]) + " |")
    if args.json:
        args.json.write_text(json.dumps(recipes, indent=1) + "\n")


if __name__ == "__main__":
    main()
