"""Training, speaker-independent cross-validation and the ablation study.

Encoders are frozen here (MiniLM's tuned top layers come from `fdrl tune-text`, run before) and
their outputs cached (fdrl.features), so training only fits the small FDRL head: a few minutes on
two CPU cores. Validation never shares a speaker with training; its speakers are normalized by
their own (unlabelled) audio, as `fdrl eval` and a live session do (fdrl.speaker).
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from fdrl import metrics
from fdrl.config import Config
from fdrl.features import Sample
from fdrl.losses import class_weights
from fdrl.model import FDRL, Batch, collate
from fdrl.speaker import SpeakerNorm, standardize


def input_dims(samples: Sequence[Sample]) -> dict[str, int]:
    """The modalities the data actually has: a branch with no training data is not built."""
    dims: dict[str, int] = {}
    for s in samples:
        for m in ("audio", "text", "vision"):
            x = getattr(s, m)
            if x is not None:
                dims[m] = x.shape[-1]
    return dims


def _present(s: Sample) -> tuple[bool, bool, bool]:
    return (s.audio is not None, s.text is not None, s.vision is not None)


def _groups(samples: Sequence[Sample]) -> dict[tuple[bool, bool, bool], list[int]]:
    """Sample indices by which modalities they have."""
    groups: dict[tuple[bool, bool, bool], list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(_present(s), []).append(i)
    return groups


def epoch_batches(samples: Sequence[Sample], rng: np.random.Generator, batch_size: int,
                  text_only_per_epoch: int) -> list[np.ndarray]:
    """One epoch of batches: every sample with audio or vision, plus a fresh random draw of
    `text_only_per_epoch` text-only samples (GoEmotions' 40k rows would otherwise drown 1.2k clips).

    Each batch holds samples with the same modalities, so a text-only batch never pays for padded
    audio frames (a mixed batch runs every encoder over every row); batch order is shuffled.
    """
    batches = []
    for key, members in _groups(samples).items():
        idx = np.array(members, dtype=np.int64)
        if key == (False, True, False) and 0 < text_only_per_epoch < len(idx):
            idx = rng.choice(idx, text_only_per_epoch, replace=False)
        rng.shuffle(idx)
        batches += [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def drop_text(batch: Batch, p: float, generator: torch.Generator) -> Batch:
    """Hide the transcript of a random fraction `p` of the speech samples (modality dropout).

    The provisional label is computed from the voice alone, and Whisper sometimes hears no words:
    the model must also decide from audio without text. RAVDESS's lexically neutral sentences
    would otherwise teach it to lean on words that say nothing.
    """
    if p <= 0 or "text" not in batch.mask or "audio" not in batch.mask:
        return batch
    both = batch.mask["audio"].any(1) & batch.mask["text"].any(1)
    drop = both & (torch.rand(len(both), generator=generator) < p)
    if drop.any():
        batch.mask["text"][drop] = False
        batch.x["text"][drop] = 0.0
        batch.words = batch.words[~drop[batch.words[:, 0]]]
    return batch


def train_model(samples: Sequence[Sample], n_classes: int, cfg: Config, seed: int | None = None,
                on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> FDRL:
    """Fit an FDRL head on encoded samples with the hyper-parameters in `cfg.train` and `cfg.loss`."""
    seed = cfg.train.seed if seed is None else seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    dims = input_dims(samples)
    model = FDRL(cfg.model, dims, n_classes)
    t = cfg.train
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    steps_per_epoch = len(epoch_batches(samples, np.random.default_rng(seed), t.batch_size, t.goemotions_per_epoch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t.lr, total_steps=max(1, steps_per_epoch * t.epochs), pct_start=0.1)
    # Balanced per corpus kind (speech vs text-only): GoEmotions' counts must not set RAVDESS's weights.
    weights = {key: class_weights(np.array([samples[i].label for i in members]), n_classes)
               for key, members in _groups(samples).items()}
    for epoch in range(t.epochs):
        model.train()
        totals: dict[str, float] = {}
        batches = epoch_batches(samples, rng, t.batch_size, t.goemotions_per_epoch)
        for b in batches:
            batch = drop_text(collate([samples[i] for i in b], dims), t.text_dropout, generator)
            out = model(batch)
            loss, parts = model.loss(batch, out, cfg.loss, class_weights=weights[_present(samples[b[0]])])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v / len(batches)
        if on_epoch:
            on_epoch(epoch, totals)
    return model.eval()


def fit_speaker_norm(samples: Sequence[Sample], cfg: Config) -> SpeakerNorm | None:
    """The population statistics a model trained on `samples` normalizes speakers with (None: `model.speaker_norm` off)."""
    return SpeakerNorm.fit(samples, cfg.model.speaker_prior_frames) if cfg.model.speaker_norm else None


def cpu_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX). There the head's forward
    runs under bf16 autocast: batch 32 took 15.7 ms against 24 ms in float32 on a 2-core EPYC, with
    posteriors within 0.004 and the same labels. Elsewhere bf16 is emulated, and slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@torch.inference_mode()
def predict_proba(model: FDRL, samples: Sequence[Sample], batch_size: int = 128, bf16: bool | None = None) -> np.ndarray:
    """Class posteriors [N, C] of the fused output; `bf16` None = on a CPU that has it (`cpu_bf16`)."""
    model.eval()
    device = next(model.parameters()).device
    bf16 = device.type == "cpu" and cpu_bf16() if bf16 is None else bf16
    out = []
    for i in range(0, len(samples), batch_size):
        batch = collate(list(samples[i:i + batch_size]), model.dims).to(device)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch).logits
        out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.n_classes), np.float32)


@dataclass
class FoldResult:
    fold: int
    seed: int
    war: float
    uar: float
    macro_f1: float


def cross_validate(samples: Sequence[Sample], folds: list[tuple[list[int], list[int]]], labels: Sequence[str],
                   cfg: Config, seeds: Sequence[int], extra_train: Sequence[Sample] = (),
                   on_fold: Callable[[FoldResult], None] | None = None) -> list[FoldResult]:
    """Train on each fold's training speakers (+ `extra_train`, e.g. GoEmotions) and score its held-out speakers."""
    results = []
    for seed in seeds:
        for k, (train_idx, val_idx) in enumerate(folds):
            train = [samples[i] for i in train_idx] + list(extra_train)
            norm = fit_speaker_norm(train, cfg)  # the held-out speakers are normalized by their own clips
            model = train_model(standardize(train, norm), len(labels), cfg, seed=seed)
            val = [samples[i] for i in val_idx]
            pred = predict_proba(model, standardize(val, norm)).argmax(1)
            s = metrics.summary(np.array([v.label for v in val]), pred, list(labels))
            r = FoldResult(k, seed, s["war"], s["uar"], s["macro_f1"])
            results.append(r)
            if on_fold:
                on_fold(r)
    return results


# The ablation: the full model, each component switched off, and the concatenation baseline.
VARIANTS: dict[str, dict[str, dict[str, object]]] = {
    "FDRL": {},
    "w/o alignment": {"model": {"alignment": "none"}},
    "w/o disparity": {"loss": {"beta": 0.0}},
    "w/o predictor": {"loss": {"gamma": 0.0}},
    "concat baseline": {"model": {"fusion": "concat"}},
}


def variant_config(cfg: Config, changes: dict[str, dict[str, object]]) -> Config:
    out = copy.deepcopy(cfg)
    for section, values in changes.items():
        setattr(out, section, dataclasses.replace(getattr(out, section), **values))
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


@dataclass
class Corpora:
    """What `fdrl train` reads. Speech corpora are cross-validated by speaker; text corpora only train."""

    ravdess: Path | None = None
    goemotions: Path | None = None        # folder with train.tsv (and dev.tsv, scored after training)
    iemocap: Path | None = None           # IEMOCAP_full_release: leave-one-session-out folds
    manifests: Sequence[Path] = ()


def train_command(cfg: Config, corpora: Corpora, out: Path, cv: bool = False, ablation: bool = False,
                  seeds: int | None = None, report: Path | None = None) -> dict:
    """Encode the corpora (cached), optionally cross-validate and ablate, then fit and save the final model."""
    from fdrl import checkpoint as ckpt_mod
    from fdrl import data
    from fdrl.errors import UserError
    from fdrl.evaluate import resolve_device
    from fdrl.features import FeatureExtractor
    from fdrl.progress import progress, stderr

    labels = list(cfg.labels.names)
    speech: list = []
    text: list = []
    dev: list = []
    iemocap = bool(corpora.iemocap)
    if corpora.ravdess:
        speech += data.load_ravdess(corpora.ravdess)
    if corpora.iemocap:
        speech += data.load_iemocap(corpora.iemocap)
    for m in corpora.manifests:
        for it in data.load_manifest(m, labels):
            (speech if it.audio is not None else text).append(it)
    if corpora.goemotions:
        text += data.load_goemotions(Path(corpora.goemotions) / "train.tsv")
        if (Path(corpora.goemotions) / "dev.tsv").is_file():
            dev = data.load_goemotions(Path(corpora.goemotions) / "dev.tsv")
    unknown = sorted({it.label for it in speech + text + dev} - set(labels))
    if unknown:
        raise UserError(f"training labels {unknown} are not in labels.names {labels}: add them to config.toml")
    if not speech and not text:
        raise UserError("nothing to train on: pass --ravdess, --goemotions, --iemocap or --manifest")
    if seeds is not None and (seeds < 1 or not (cv or ablation)):
        raise UserError(f"--seeds {seeds}: give a count of at least 1, together with --cv or --ablation")

    extractor = FeatureExtractor(cfg, resolve_device(cfg.runtime.device))
    items = speech + text + dev
    with progress("encoding", len(items)) as advance:
        samples = extractor.extract(items, labels, progress=advance)
    speech_s, text_s, dev_s = samples[:len(speech)], samples[len(speech):len(speech) + len(text)], samples[len(speech) + len(text):]

    result: dict = {"labels": labels, "n_speech": len(speech_s), "n_text": len(text_s), "config": cfg.to_dict()}
    variants = VARIANTS if ablation else ({"FDRL": {}} if cv else {})
    if variants:
        # IEMOCAP: leave-one-session-out (speaker ids start with 'SesNN'); otherwise speaker-independent k-fold.
        folds = (data.speaker_folds(speech, 5, cfg.train.seed, group_of=lambda it: it.speaker[:5]) if iemocap
                 else data.speaker_folds(speech, cfg.train.folds, cfg.train.seed))
    seed_list = [cfg.train.seed + k for k in range(seeds or (3 if ablation else 1))]
    table = {}
    for name, changes in variants.items():
        vcfg = variant_config(cfg, changes)
        with progress(f"CV {name}", len(folds) * len(seed_list)) as advance:
            runs = cross_validate(speech_s, folds, labels, vcfg, seed_list, extra_train=text_s, on_fold=lambda r: advance(1))
        per_seed = {s: [r for r in runs if r.seed == s] for s in seed_list}
        table[name] = {m: mean_std([np.mean([getattr(r, m) for r in rs]) for rs in per_seed.values()])
                       for m in ("war", "uar", "macro_f1")}
        stderr.print(f"{name:16s} WAR {100 * table[name]['war'][0]:.1f}±{100 * table[name]['war'][1]:.1f}  "
                     f"UAR {100 * table[name]['uar'][0]:.1f}±{100 * table[name]['uar'][1]:.1f}")
    if table:
        result["cross_validation"] = {"folds": len(folds), "seeds": seed_list, "table": table}

    norm = fit_speaker_norm(speech_s + text_s, cfg)
    with progress("final fit", cfg.train.epochs) as advance:
        model = train_model(standardize(speech_s + text_s, norm), len(labels), cfg, on_epoch=lambda e, parts: advance(1))
    if dev_s:
        pred = predict_proba(model, dev_s).argmax(1)
        result["goemotions_dev"] = metrics.summary(np.array([s.label for s in dev_s]), pred, labels)
    ckpt_mod.save(out, model, labels, input_dims(speech_s + text_s), extractor.encoder_ids, cfg.model,
                  {k: v for k, v in result.items() if k != "config"}, speaker_norm=norm)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result, indent=2))
    return result
