"""Leave-one-corpus-out (and speaker-independent) measurements of one training recipe, with every
held-out logit kept, so calibration and per-branch fusion are measured on the same predictions.

Each fold trains the FDRL head exactly as `fdrl train --cv` does (`fdrl.train.cross_validate`),
GoEmotions always on the training side, and scores the held-out clips with their speaker known and
without (each clip normalized by itself). Printed per held-out corpus: UAR with and without
speaker, the share of the most-predicted label, ECE before and after temperature scaling (each
fold's temperature fitted on the other folds' held-out logits only) and the UAR of per-branch
calibrated fusion (voice and text posteriors multiplied) against FDRL's fused output. With
`--paired`, also whether words that carry an emotion count beside a voice (`held_out_logits`): UAR
with the words of a GoEmotions dev comment of each clip's label, and the share of neutral clips
given an emotion's words that take that emotion (`flat_words_heard`).

    .venv/bin/python scripts/loco.py ../shared/data --cv corpus --set train.balance_corpora=true --out runs/loco-balanced.npz
    .venv/bin/python scripts/loco.py ../shared/data --goemotions-rows 8000 --paired --set train.neutral_voice_words=0.5 --out runs/nvw.npz
    .venv/bin/python scripts/loco.py ../shared/data --cv ravdess --out runs/ravdess-only.npz   # train on RAVDESS, test TESS + EMOVO
    .venv/bin/python scripts/loco.py ../shared/data --goemotions-rows 8000 --set train.augment_copies=1 --out runs/aug1.npz
    .venv/bin/python scripts/loco.py ../shared/data --checkpoint runs/r0.safetensors --test tess,emovo --out runs/r0.npz  # score a checkpoint
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from stream import process

process.configure(reexec=False)  # as the `fdrl` command does, before torch is imported

import numpy as np

from fdrl import config, data, metrics
from fdrl.calibration import ece, fit_temperature, softmax
from fdrl.features import FeatureExtractor
from fdrl.skips import SkipLog, extract_each
from fdrl.labels import neutral_index
from fdrl.train import FoldResult, cross_validate, extract_copies, held_out_logits, words_heard


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="the shared data folder (ravdess/, tess/, emovo/, goemotions/)")
    ap.add_argument("--cv", choices=("corpus", "speaker", "ravdess"), default="corpus",
                    help="corpus: leave one corpus out; speaker: speaker-independent folds over all three; "
                         "ravdess: train on RAVDESS alone, test on TESS and EMOVO")
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value")
    ap.add_argument("--no-goemotions", action="store_true")
    ap.add_argument("--goemotions-rows", type=int, default=0,
                    help="use only the first N single-label GoEmotions rows (0: all); each epoch draws train.goemotions_per_epoch of them")
    ap.add_argument("--paired", action="store_true",
                    help="also score each held-out clip with the words of a GoEmotions dev comment of its label")
    ap.add_argument("--checkpoint", type=Path, help="score this checkpoint instead of training (with --test)")
    ap.add_argument("--fit", type=Path, help="train one model on --train's corpora (+ GoEmotions) and save it here, nothing else")
    ap.add_argument("--train", default="ravdess", help="with --fit: the corpora it trains on")
    ap.add_argument("--test", default="tess,emovo", help="with --checkpoint: the corpora it is scored on")
    ap.add_argument("--out", type=Path, required=True, help=".npz with every fold's held-out logits")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = config.load(overrides=args.set)
    if args.fit:
        from fdrl import checkpoint
        checkpoint.check_name(args.fit)  # before the encoding, not after it
    labels = list(cfg.labels.names)
    skips = SkipLog(strict=False)
    loaders = {"ravdess": data.load_ravdess, "tess": data.load_tess, "emovo": data.load_emovo}
    names = args.test.split(",") if args.checkpoint else args.train.split(",") if args.fit else list(loaders)
    items = [it for name in names for it in loaders[name](args.data / name, skips)]
    text = ([] if args.no_goemotions or args.checkpoint
            else data.load_goemotions(args.data / "goemotions" / "train.tsv", skips=skips))
    text = text[:args.goemotions_rows] if args.goemotions_rows else text
    extractor = FeatureExtractor(cfg, "cpu")
    items, speech = extract_each(extractor, items, labels, skips)
    _, text_s = extract_each(extractor, text, labels, skips)
    paired = []
    if args.paired:
        dev = data.load_goemotions(args.data / "goemotions" / "dev.tsv", skips=skips)
        _, paired = extract_each(extractor, dev, labels, skips)
    augmented = (extract_copies(extractor, items, labels, skips, cfg.train.augment_copies)
                 if cfg.train.augment_copies and not args.checkpoint else [])
    logging.info("encoded %d clips, %d augmented copies, %d texts, %d skipped", len(speech), len(augmented), len(text_s), len(skips))
    if args.fit:
        from fdrl import checkpoint
        from fdrl.train import fit_speaker_norm, fold_training, input_dims, train_model
        train = fold_training(speech, range(len(speech)), text_s, augmented)
        norm = fit_speaker_norm(train, cfg)
        model = train_model(train, len(labels), cfg, norm=norm)
        checkpoint.save(args.fit, model, labels, input_dims(speech + text_s), extractor.encoder_ids, cfg.model,
                        {"trained_on": names}, speaker_norm=norm)
        return
    if args.checkpoint:
        from fdrl import checkpoint
        ckpt = checkpoint.load(args.checkpoint, extractor.encoder_ids)
        logits = held_out_logits(ckpt.model, speech, ckpt.speaker_norm, paired, neutral_index(labels))
        y = np.array([s.label for s in speech])
        # One "fold" per test corpus, so each corpus is calibrated on the other corpora's logits only.
        runs = []
        for k, name in enumerate(names):
            idx = [i for i, it in enumerate(items) if it.corpus == name]
            part = {c: v[idx] for c, v in logits.items()}
            runs.append(FoldResult(k, cfg.train.seed, 0.0, metrics.uar(y[idx], part["speaker"].argmax(1)), 0.0,
                                   metrics.uar(y[idx], part["no_speaker"].argmax(1)), idx, part))
    elif args.cv == "corpus":
        folds = data.corpus_folds(items)
    elif args.cv == "speaker":
        folds = data.speaker_folds(items, cfg.train.folds, cfg.train.seed)
    else:
        folds = [([i for i, it in enumerate(items) if it.corpus == "ravdess"],
                  [i for i, it in enumerate(items) if it.corpus != "ravdess"])]
    if not args.checkpoint:
        def done(r: FoldResult) -> None:  # each fold's logits kept as it ends: a long run stopped early still tells
            logging.info("fold %d: UAR %.3f, without speaker %.3f", r.fold, r.uar, r.uar_no_speaker)
            np.savez(args.out.with_suffix(f".fold{r.fold}.npz"), val=np.array(r.val_idx), **r.logits)
        runs = cross_validate(speech, folds, labels, cfg, [cfg.train.seed], extra_train=text_s, on_fold=done,
                              paired_text=paired, augmented=augmented)
    corpus = np.array([it.corpus for it in items])
    y = np.array([s.label for s in speech])
    arrays = {"y": y, "corpus": corpus}
    for r in runs:
        arrays[f"val_{r.fold}"] = np.array(r.val_idx)
        arrays |= {f"{c}_{r.fold}": v for c, v in r.logits.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **arrays)
    print(json.dumps({"recipe": args.set, "cv": args.cv, **report(runs, y, corpus, labels)}, indent=1))


def report(runs, y: np.ndarray, corpus: np.ndarray, labels: list[str]) -> dict:
    """Per held-out corpus: UAR (speaker known / not), top label share, ECE before/after, branch fusion."""
    out: dict = {}
    for k, r in enumerate(runs):
        others = [o for j, o in enumerate(runs) if j != k]
        idx = np.array(r.val_idx)

        def temperature(cond: str) -> float:
            if not others:  # one fold: no held-out logits to calibrate on but its own
                return float("nan")
            return fit_temperature(np.concatenate([o.logits[cond] for o in others]),
                                   np.concatenate([y[o.val_idx] for o in others]))
        t = {c: temperature(c) for c in r.logits}
        for name in sorted(set(corpus[idx])):
            m = corpus[idx] == name
            yy = y[idx][m]
            row = {}
            for cond in ("speaker", "no_speaker", "audio", "text", "paired"):
                if cond in r.logits:
                    pred = r.logits[cond][m].argmax(1)
                    row[f"uar_{cond}"] = round(metrics.uar(yy, pred), 4)
                    row[f"top_share_{cond}"] = round(float(np.bincount(pred, minlength=len(labels)).max() / len(pred)), 3)
            if "flat" in r.logits:  # neutral clips with emotional words: are the words heard?
                neutral = neutral_index(labels)
                calm = m & (y[idx] == neutral)
                row["flat_words_heard"] = round(float(words_heard(r.logits["flat"], neutral)[calm].mean()), 3)
            row["ece"] = round(ece(softmax(r.logits["speaker"][m]), yy), 4)
            if not np.isnan(t["speaker"]):
                row["temperature"] = round(t["speaker"], 3)
                calibrated = softmax(r.logits["speaker"][m], t["speaker"])
                row["ece_calibrated"] = round(ece(calibrated, yy), 4)
                # What an `uncertain` threshold would do: share of labels shown, accuracy shown / withheld.
                top, right = calibrated.max(1), calibrated.argmax(1) == yy
                row["uncertain_below"] = {tau: [round(float(np.mean(top >= tau)), 3),
                                                round(float(right[top >= tau].mean()), 3) if (top >= tau).any() else None,
                                                round(float(right[top < tau].mean()), 3) if (top < tau).any() else None]
                                          for tau in (0.3, 0.4, 0.5, 0.6)}
            if "audio" in r.logits and not np.isnan(t["audio"]):
                # Product of the calibrated branch posteriors (naive Bayes with a flat prior).
                log_p = (np.log(softmax(r.logits["audio"][m], t["audio"]) + 1e-12)
                         + np.log(softmax(r.logits["text"][m], t["text"]) + 1e-12))
                row["uar_branch_fusion"] = round(metrics.uar(yy, log_p.argmax(1)), 4)
                row["ece_branch_fusion"] = round(ece(softmax(log_p), yy), 4)
            out[f"fold{r.fold}:{name}"] = row
    return out


if __name__ == "__main__":
    main()
