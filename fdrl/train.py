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
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import torch

from fdrl import augment, metrics
from fdrl.config import Config
from fdrl.inputs import Sample
from fdrl.labels import neutral_index
from fdrl.losses import class_weights
from fdrl.model import FDRL, Batch, collate
from fdrl.calibration import ece, fit_temperature, softmax
from fdrl.predict import WordsReader, pooled_words, predict_logits, predict_proba, read_words, words_alone
from fdrl.skips import SkipLog, extract_each
from fdrl.speaker import SpeakerNorm, SubsetNorm, standardize

if TYPE_CHECKING:
    from fdrl.data import Item
    from fdrl.features import FeatureExtractor

log = logging.getLogger(__name__)


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


def draw_weights(samples: Sequence[Sample], neutral: int | None, dialogue_neutral: float) -> np.ndarray:
    """How likely each sample is to be drawn, relative to the others: 1, and `dialogue_neutral` for
    DailyDialog's neutral turns. Why: 83 % of its turns are neutral; drawn as they come they teach
    that conversation is neutral (fdrl.tune_text thins them the same way)."""
    return np.array([dialogue_neutral if s.corpus == "dailydialog" and s.label == neutral else 1.0 for s in samples])


def epoch_draw(samples: Sequence[Sample], rng: np.random.Generator, text_only_per_epoch: int,
               balance_corpora: bool = False, weights: np.ndarray | None = None) -> np.ndarray:
    """The sample indices of one epoch: the speech clips (every one, or each corpus equally), plus a
    fresh random draw of `text_only_per_epoch` text-only samples (GoEmotions' 40k rows would otherwise
    drown 1.2k clips), each as likely as its `weights` say (`draw_weights`; default all alike).

    With `balance_corpora`, each speech corpus (`Sample.corpus`) contributes the same number of clips,
    the mean corpus size, so the epoch is as long as before: a larger corpus gives a fresh random
    subset each epoch, a smaller one all its clips and a random repeat of some. Why: TESS's 2,795
    clips of two speakers would otherwise outweigh EMOVO's 588 of six and teach the voices of two
    women rather than emotion in a voice.
    """
    speech = [i for i, s in enumerate(samples) if s.audio is not None or s.vision is not None]
    text_only = np.array([i for i, s in enumerate(samples) if s.audio is None and s.vision is None and s.text is not None],
                         dtype=np.int64)
    if 0 < text_only_per_epoch < len(text_only):
        p = None if weights is None else weights[text_only] / weights[text_only].sum()
        text_only = rng.choice(text_only, text_only_per_epoch, replace=False, p=p)
    corpora: dict[str, list[int]] = {}
    for i in speech:
        corpora.setdefault(samples[i].corpus, []).append(i)
    if not balance_corpora or len(corpora) < 2:
        chosen = np.array(speech, dtype=np.int64)
    else:
        share = round(len(speech) / len(corpora))
        parts = []
        for members in corpora.values():
            idx = np.array(members, dtype=np.int64)
            if len(idx) >= share:
                parts.append(rng.choice(idx, share, replace=False))
            else:
                parts += [idx, rng.choice(idx, share - len(idx), replace=True)]
        chosen = np.concatenate(parts)
    return np.concatenate([chosen, text_only]).astype(np.int64)


def epoch_batches(samples: Sequence[Sample], rng: np.random.Generator, batch_size: int,
                  text_only_per_epoch: int, balance_corpora: bool = False,
                  weights: np.ndarray | None = None) -> list[np.ndarray]:
    """One epoch of batches over `epoch_draw`'s samples.

    Each batch holds samples with the same modalities, so a text-only batch never pays for padded
    audio frames (a mixed batch runs every encoder over every row); batch order is shuffled.
    """
    drawn = epoch_draw(samples, rng, text_only_per_epoch, balance_corpora, weights)
    groups: dict[tuple[bool, bool, bool], list[int]] = {}
    for i in drawn:
        groups.setdefault(_present(samples[i]), []).append(int(i))
    batches = []
    for members in groups.values():
        idx = np.array(members, dtype=np.int64)
        rng.shuffle(idx)
        batches += [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def drop_text(batch: Batch, p: float, generator: torch.Generator, keep: torch.Tensor | None = None) -> Batch:
    """Hide the transcript of a random fraction `p` of the speech samples (modality dropout), never
    of the rows `keep` marks (words lent by `neutral_voice_words`: their label is the words').

    The provisional label is computed from the voice alone, and Whisper sometimes hears no words:
    the model must also decide from audio without text. RAVDESS's lexically neutral sentences
    would otherwise teach it to lean on words that say nothing.
    """
    if p <= 0 or "text" not in batch.mask or "audio" not in batch.mask:
        return batch
    both = batch.mask["audio"].any(1) & batch.mask["text"].any(1)
    drop = both & (torch.rand(len(both), generator=generator) < p)
    if keep is not None:
        drop &= ~keep
    if drop.any():
        batch.mask["text"][drop] = False
        batch.x["text"][drop] = 0.0
        batch.words = batch.words[~drop[batch.words[:, 0]]]
    return batch


def neutral_voice_words(chosen: list[Sample], pool: dict[int, list[Sample]], p: float, neutral: int | None,
                        rng: np.random.Generator) -> list[Sample]:
    """Give a random fraction `p` of the neutral speech samples the words of a text-only sample with
    an emotion, and that emotion as their label (the label drawn uniformly, then a sample of it).
    Wordless neutral clips (no transcript) are among them: they get words too.

    Why: "neutral" is the absence of an emotional cue, not a cue of its own. The speech corpora
    teach the fused head that an emotional voice with neutral words is the voice's emotion; nothing
    teaches it the mirror case, a calm voice saying "I am furious with you!", which it then calls
    neutral. This is that mirror, made from the same clips.
    """
    emotions = [label for label in pool if label != neutral]
    if p <= 0 or neutral is None or not emotions:
        return chosen
    out = []
    for s in chosen:
        if s.label == neutral and s.audio is not None and rng.random() < p:
            label = emotions[rng.integers(len(emotions))]
            s = dataclasses.replace(_lend(s, pool[label], rng), label=label)
        out.append(s)
    return out


def _by_label(samples: Iterable[Sample]) -> dict[int, list[Sample]]:
    """The samples grouped by label (the donors `_lend` draws words from)."""
    groups: dict[int, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.label, []).append(s)
    return groups


def _lend(s: Sample, donors: list[Sample] | None, rng: np.random.Generator) -> Sample:
    """`s` with the words of a random one of `donors` (unchanged if there are none)."""
    if not donors:
        return s
    donor = donors[rng.integers(len(donors))]
    return dataclasses.replace(s, text=donor.text, word_spans=None, transcript=donor.transcript)


def train_model(samples: Sequence[Sample], n_classes: int, cfg: Config, seed: int | None = None,
                on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                norm: SpeakerNorm | None = None) -> FDRL:
    """Fit an FDRL head on encoded samples with the hyper-parameters in `cfg.train` and `cfg.loss`.

    `norm` None: the samples are the model's input as they are (already standardized, or a model
    without speaker normalization). Given, the samples are raw and are standardized here: by all of
    each speaker's clips, or, with `train.speaker_subsets`, by a fresh random subset of them in every
    batch (`SubsetNorm`), as live use and speaker-less manifests see them.
    """
    seed = cfg.train.seed if seed is None else seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    t = cfg.train
    subsets = SubsetNorm(samples, norm) if norm is not None and t.speaker_subsets else None
    if norm is not None and subsets is None:
        samples = standardize(samples, norm)
    dims = input_dims(samples)
    model = FDRL(cfg.model, dims, n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    neutral = neutral_index(cfg.labels.names)
    draw = draw_weights(samples, neutral, t.dialogue_neutral)
    steps_per_epoch = len(epoch_batches(samples, np.random.default_rng(seed), t.batch_size, t.goemotions_per_epoch,
                                        t.balance_corpora, draw))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t.lr, total_steps=max(1, steps_per_epoch * t.epochs), pct_start=0.1)
    # Balanced per corpus kind (speech vs text-only): GoEmotions' counts must not set RAVDESS's weights.
    weights = {key: class_weights(np.array([samples[i].label for i in members]), n_classes, draw[members])
               for key, members in _groups(samples).items()}
    donors = _by_label(s for s in samples if s.audio is None and s.vision is None and s.text is not None)
    for epoch in range(t.epochs):
        model.train()
        totals: dict[str, float] = {}
        batches = epoch_batches(samples, rng, t.batch_size, t.goemotions_per_epoch, t.balance_corpora, draw)
        for b in batches:
            chosen = subsets.draw(samples, b, rng) if subsets is not None else [samples[i] for i in b]
            lent = neutral_voice_words(chosen, donors, t.neutral_voice_words, neutral, rng)
            keep = torch.tensor([given is not own for given, own in zip(lent, chosen)])
            batch = drop_text(collate(lent, dims), t.text_dropout, generator, keep)
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


def fit_words_reader(samples: Sequence[Sample], n_classes: int, neutral: int | None, dialogue_neutral: float) -> WordsReader | None:
    """The words reader (`fdrl.predict.WordsReader`) of the text-only samples: multinomial logistic
    regression (scikit-learn, L2, C = 1) on each one's mean token state, DailyDialog's neutral turns
    weighted as the FDRL head draws them (`draw_weights`). None unless the text-only samples have two labels or more."""
    from sklearn.linear_model import LogisticRegression

    text = [s for s in samples if words_alone(s)]
    y = np.array([s.label for s in text])
    if len(np.unique(y)) < 2:
        return None
    fit = LogisticRegression(max_iter=1000).fit(pooled_words(text), y, sample_weight=draw_weights(text, neutral, dialogue_neutral))
    coef, intercept = fit.coef_, fit.intercept_
    if len(fit.classes_) == 2:  # scikit-learn keeps one row for two classes: softmax([-z/2, z/2]) is its sigmoid(z)
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((n_classes, coef.shape[1]), np.float32)
    bias = np.full(n_classes, -30.0, np.float32)  # a label no text row had is never read from words
    weight[fit.classes_], bias[fit.classes_] = coef, intercept
    return WordsReader(weight, bias)


def fit_speaker_norm(samples: Sequence[Sample], cfg: Config) -> SpeakerNorm | None:
    """The population statistics a model trained on `samples` normalizes speakers with (None: `model.speaker_norm` off)."""
    return SpeakerNorm.fit(samples, cfg.model.speaker_prior_frames) if cfg.model.speaker_norm else None


@dataclass
class FoldResult:
    fold: int
    seed: int
    war: float
    uar: float
    macro_f1: float
    uar_no_speaker: float = float("nan")     # the same clips, each normalized by itself (no `speaker`)
    val_idx: list[int] = dataclasses.field(default_factory=list)
    logits: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # CONDITIONS -> [N_val, C]


# What each held-out clip is scored under: its speaker known (all of the speaker's held-out clips),
# no speaker (normalized by itself), and one branch at a time (for calibrated per-branch fusion).
CONDITIONS = ("speaker", "no_speaker", "audio", "text")


def held_out_logits(model: FDRL, val: Sequence[Sample], norm: SpeakerNorm | None,
                    paired_text: Sequence[Sample] = (), neutral: int | None = None) -> dict[str, np.ndarray]:
    """Logits of the held-out samples under each of `CONDITIONS` (absent branches give their
    condition only where the model has them).

    With `paired_text` (held-out text-only samples) two more, which ask whether words that carry an
    emotion count beside a voice (the speech corpora's own sentences never do): "paired", each clip
    with the words of a text of its own label; and "flat", each clip with the words of a text whose
    label is `flat_targets` (scored on the neutral clips: a calm voice saying emotional words)."""
    with_speaker = standardize(val, norm)
    alone = standardize([dataclasses.replace(v, speaker="") for v in val], norm)
    out = {"speaker": predict_logits(model, with_speaker), "no_speaker": predict_logits(model, alone)}
    if paired_text and "text" in model.dims:
        pool = _by_label(paired_text)
        rng = np.random.default_rng(0)
        out["paired"] = predict_logits(model, [_lend(v, pool.get(v.label), rng) for v in with_speaker])
        flat = flat_targets(len(val), out["speaker"].shape[1], neutral)
        out["flat"] = predict_logits(model, [_lend(v, pool.get(k), rng) for v, k in zip(with_speaker, flat)])
    if "audio" in model.dims and "text" in model.dims:
        out["audio"] = predict_logits(model, [dataclasses.replace(v, text=None, word_spans=None) for v in with_speaker])
        # A clip without words has no text-only reading: its voice-only logits stand in.
        out["text"] = np.where(np.array([v.text is not None for v in val])[:, None],
                               predict_logits(model, [dataclasses.replace(v, audio=None, word_spans=None)
                                                      if v.text is not None else v for v in with_speaker]), out["audio"])
    return out


def fold_training(samples: Sequence[Sample], train_idx: Sequence[int], extra_train: Sequence[Sample] = (),
                  augmented: Sequence[tuple[int, Sample]] = ()) -> list[Sample]:
    """A fold's training samples: its own, the extra ones (text) and the augmented copies of its own
    only, so no perturbed copy of a held-out clip is ever trained on. The final fit is the fold that
    holds nothing out."""
    own = set(train_idx)
    return [samples[i] for i in train_idx] + list(extra_train) + [twin for source, twin in augmented if source in own]


def cross_validate(samples: Sequence[Sample], folds: list[tuple[list[int], list[int]]], labels: Sequence[str],
                   cfg: Config, seeds: Sequence[int], extra_train: Sequence[Sample] = (),
                   on_fold: Callable[[FoldResult], None] | None = None,
                   paired_text: Sequence[Sample] = (),
                   augmented: Sequence[tuple[int, Sample]] = ()) -> list[FoldResult]:
    """Train on each fold's training speakers (+ `extra_train`, e.g. GoEmotions, + the `augmented`
    copies (index of the clean sample, copy) of its training samples) and score its held-out
    speakers, with their speaker known and without (and with `paired_text`: `held_out_logits`); each
    result keeps its held-out logits (for the calibration fitted on held-out folds only)."""
    results = []
    neutral = neutral_index(labels)
    for seed in seeds:
        for k, (train_idx, val_idx) in enumerate(folds):
            train = fold_training(samples, train_idx, extra_train, augmented)
            norm = fit_speaker_norm(train, cfg)  # the held-out speakers are normalized by their own clips
            model = train_model(train, len(labels), cfg, seed=seed, norm=norm)
            val = [samples[i] for i in val_idx]
            logits = held_out_logits(model, val, norm, paired_text, neutral)
            y = np.array([v.label for v in val])
            s = metrics.summary(y, logits["speaker"].argmax(1), list(labels))
            alone = metrics.summary(y, logits["no_speaker"].argmax(1), list(labels))
            r = FoldResult(k, seed, s["war"], s["uar"], s["macro_f1"], alone["uar"], list(val_idx), logits)
            results.append(r)
            if on_fold:
                on_fold(r)
    return results


def extract_copies(extractor: FeatureExtractor, items: Sequence[Item], labels: Sequence[str], skips: SkipLog,
                   n: int, progress: Callable[[int], None] | None = None) -> list[tuple[int, Sample]]:
    """The samples of `n` augmented copies of each of `items` (`fdrl.augment.copies`), as (index of
    the clean item, sample); a copy that cannot be encoded is skipped like any item."""
    pairs = augment.copies(items, n)
    kept, samples = extract_each(extractor, [twin for _, twin in pairs], labels, skips, progress=progress)
    source = {id(twin): i for i, twin in pairs}
    return [(source[id(item)], sample) for item, sample in zip(kept, samples)]


def flat_targets(n: int, n_classes: int, neutral: int | None) -> np.ndarray:
    """The label of the words the n held-out clips get in the "flat" condition: the emotions other
    than `neutral` in turn, so every emotion is asked for equally often."""
    emotions = [k for k in range(n_classes) if k != neutral]
    return np.array([emotions[i % len(emotions)] for i in range(n)], dtype=np.int64)


def words_heard(flat: np.ndarray, neutral: int | None) -> np.ndarray:
    """Per held-out clip, whether its "flat" logits take the emotion of the words it was given. On
    the neutral clips this asks whether a calm voice lets emotional words through."""
    return flat.argmax(1) == flat_targets(len(flat), flat.shape[1], neutral)


def held_out_temperature(samples: Sequence[Sample], runs: Sequence[FoldResult], condition: str = "speaker") -> float:
    """The calibration temperature fitted on every fold's held-out logits (never on training data)."""
    if not runs:
        return 1.0
    logits = np.concatenate([r.logits[condition] for r in runs])
    y = np.array([samples[i].label for r in runs for i in r.val_idx])
    return fit_temperature(logits, y)


def calibration_report(samples: Sequence[Sample], runs: Sequence[FoldResult]) -> dict[str, tuple[float, float]]:
    """ECE per fold (mean, std) before and after temperature scaling, each fold's temperature fitted
    on the other folds' held-out logits only, so no fold is calibrated on itself."""
    before, after = [], []
    for k, r in enumerate(runs):
        y = np.array([samples[i].label for i in r.val_idx])
        others = [o for j, o in enumerate(runs) if j != k and o.seed == r.seed]
        before.append(ece(softmax(r.logits["speaker"]), y))
        after.append(ece(softmax(r.logits["speaker"], held_out_temperature(samples, others)), y))
    return {"ece": mean_std(before), "ece_calibrated": mean_std(after)}


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
    tess: Path | None = None              # folder with OAF/ and YAF/
    emovo: Path | None = None             # folder with f1 ... m3/
    dailydialog: Path | None = None       # folder with train/: text-only turns with their context (validation/test unused)


CV_KINDS = ("speaker", "corpus")  # speaker-independent k-fold, or leave-one-corpus-out


def train_command(cfg: Config, corpora: Corpora, out: Path, cv: str | None = None, ablation: bool = False,
                  seeds: int | None = None, report: Path | None = None, skips: SkipLog | None = None) -> dict:
    """Encode the corpora (cached), optionally cross-validate and ablate, then fit and save the final model.

    `out` and `report` are checked before any encoding (fdrl.outputs). A line or file of the
    corpora that cannot be loaded or encoded goes to `skips` (default: strict, the first one is a
    UserError); the result counts them.
    """
    from fdrl import checkpoint as ckpt_mod
    from fdrl import data
    from fdrl.errors import UserError
    from fdrl.features import FeatureExtractor
    from fdrl.outputs import check_outputs, config_inputs, write_atomic
    from fdrl.predict import resolve_device
    from fdrl.progress import progress

    log = skips if skips is not None else SkipLog()

    labels = list(cfg.labels.names)
    speech: list = []
    text: list = []
    dev: list = []
    iemocap = bool(corpora.iemocap)
    if corpora.ravdess:
        speech += data.load_ravdess(corpora.ravdess, log)
    if corpora.iemocap:
        speech += data.load_iemocap(corpora.iemocap, skips=log)
    if corpora.tess:
        speech += data.load_tess(corpora.tess, log)
    if corpora.emovo:
        speech += data.load_emovo(corpora.emovo, log)
    for m in corpora.manifests:
        for it in data.load_manifest(m, labels, log, cfg.encoders.text_max_chars):
            (speech if it.audio is not None else text).append(it)
    if corpora.dailydialog:
        text += data.load_dailydialog(corpora.dailydialog, "train", log, cfg.encoders.text_max_chars)
    if corpora.goemotions:
        text += data.load_goemotions(Path(corpora.goemotions) / "train.tsv", skips=log, max_text_chars=cfg.encoders.text_max_chars)
        if (Path(corpora.goemotions) / "dev.tsv").is_file():
            dev = data.load_goemotions(Path(corpora.goemotions) / "dev.tsv", skips=log, max_text_chars=cfg.encoders.text_max_chars)
    unknown = sorted({it.label for it in speech + text + dev} - set(labels))
    if unknown:
        raise UserError(f"training labels {unknown} are not in labels.names {labels}: add them to config.toml")
    if not speech and not text:
        raise UserError("nothing to train on: pass --ravdess, --tess, --emovo, --goemotions, --dailydialog, --iemocap or --manifest")
    if cv is not None and cv not in CV_KINDS:
        raise UserError(f"--cv {cv}: use one of {', '.join(CV_KINDS)}")
    if seeds is not None and (seeds < 1 or not (cv or ablation)):
        raise UserError(f"--seeds {seeds}: give a count of at least 1, together with --cv or --ablation")

    read = [corpora.ravdess, corpora.iemocap, corpora.tess, corpora.emovo, corpora.goemotions, corpora.dailydialog, *corpora.manifests,
            *config_inputs(cfg)]
    ckpt_mod.check_name(out)  # NAME.safetensors, with NAME.json beside it: both checked here, before the work
    check_outputs({"--out": out, "--out settings": ckpt_mod.settings_path(out), "--report": report},
                  [*read, *(f for it in speech + text + dev for f in it.files)])

    extractor = FeatureExtractor(cfg, resolve_device(cfg.runtime.device))
    with progress("encoding", len(speech) + len(text) + len(dev)) as advance:
        speech, speech_s = extract_each(extractor, speech, labels, log, progress=advance)
        text, text_s = extract_each(extractor, text, labels, log, progress=advance)
        dev, dev_s = extract_each(extractor, dev, labels, log, progress=advance)
    augmented: list[tuple[int, Sample]] = []
    if cfg.train.augment_copies and speech:
        with progress("encoding augmented copies", cfg.train.augment_copies * len(speech)) as advance:
            augmented = extract_copies(extractor, speech, labels, log, cfg.train.augment_copies, progress=advance)
    if not speech_s and not text_s:
        raise UserError(f"nothing to train on: every item was skipped ({len(log)}, see the warnings above)")

    result: dict = {"labels": labels, "n_speech": len(speech_s), "n_augmented": len(augmented), "n_text": len(text_s), **log.summary(),
                    "config": cfg.to_dict()}
    variants = VARIANTS if ablation else ({"FDRL": {}} if cv else {})
    if variants:
        # Leave-one-corpus-out when asked; IEMOCAP alone: leave-one-session-out (speaker ids start with
        # 'SesNN'); otherwise speaker-independent k-fold.
        if cv == "corpus":
            folds = data.corpus_folds(speech)
        elif iemocap:
            folds = data.speaker_folds(speech, 5, cfg.train.seed, group_of=lambda it: it.speaker[:5])
        else:
            folds = data.speaker_folds(speech, cfg.train.folds, cfg.train.seed)
    seed_list = [cfg.train.seed + k for k in range(seeds or (3 if ablation else 1))]
    table = {}
    temperature = 1.0
    for name, changes in variants.items():
        vcfg = variant_config(cfg, changes)
        with progress(f"CV {name}", len(folds) * len(seed_list)) as advance:
            runs = cross_validate(speech_s, folds, labels, vcfg, seed_list, extra_train=text_s, on_fold=lambda r: advance(1),
                                  augmented=augmented)
        per_seed = {s: [r for r in runs if r.seed == s] for s in seed_list}
        table[name] = {m: mean_std([np.mean([getattr(r, m) for r in rs]) for rs in per_seed.values()])
                       for m in ("war", "uar", "macro_f1", "uar_no_speaker")}
        if name == "FDRL":  # the shipped recipe: its held-out predictions calibrate the final model
            temperature = held_out_temperature(speech_s, runs)
            table[name] |= calibration_report(speech_s, runs)
        war, uar = table[name]["war"], table[name]["uar"]
        logging.getLogger(__name__).info("%-16s WAR %.1f±%.1f  UAR %.1f±%.1f", name, 100 * war[0], 100 * war[1], 100 * uar[0], 100 * uar[1])
    if table:
        result["cross_validation"] = {"kind": cv or "speaker", "folds": len(folds), "seeds": seed_list, "table": table,
                                      "temperature": temperature}

    train = fold_training(speech_s, range(len(speech_s)), text_s, augmented)
    norm = fit_speaker_norm(train, cfg)
    with progress("final fit", cfg.train.epochs) as advance:
        model = train_model(train, len(labels), cfg, on_epoch=lambda e, parts: advance(1), norm=norm)
    reader = fit_words_reader(text_s, len(labels), neutral_index(labels), cfg.train.dialogue_neutral)
    if dev_s:
        y_dev, p_dev = np.array([s.label for s in dev_s]), predict_proba(model, dev_s, temperature=temperature)
        # What the checkpoint says of GoEmotions dev (words alone: FDRL mixed with the reader), and FDRL's part.
        result["goemotions_dev"] = metrics.summary(y_dev, read_words(p_dev, dev_s, reader, cfg.late_fusion.words_weight).argmax(1), labels)
        result["goemotions_dev_fdrl"] = metrics.summary(y_dev, p_dev.argmax(1), labels)
    ckpt_mod.save(out, model, labels, input_dims(speech_s + text_s), extractor.encoder_ids, cfg.model,
                  {k: v for k, v in result.items() if k != "config"}, speaker_norm=norm, temperature=temperature,
                  words_reader=reader)
    if report is not None:
        write_atomic(report, json.dumps(result, indent=2))
    return result
