"""`fdrl tune-text`: fine-tune MiniLM's top layers on GoEmotions, the one encoder part we train.

Why: with frozen MiniLM token states the FDRL head stops near 0.53 GoEmotions dev macro-F1; the
usual way past that is fine-tuning. Tuning only the top `layers` keeps it affordable and small:
the frozen bottom layers run once over the corpus, each epoch runs only the top ones (about 3
minutes per epoch for two layers on one CPU core), and the result is 3.5 MB per layer in float16.
Plain cross-entropy is the default: class-balancing here gave lower dev macro-F1 (0.615 vs 0.642,
two layers, three epochs) — the FDRL head, trained afterwards with balanced classes, handles the
imbalance; the layers only need to separate the classes well.

The tuning head (masked mean over tokens, dropout, linear) is thrown away: it only shapes the
layers, and the FDRL head is trained afterwards on the tuned token states, with a reader of the
same shape for words alone (`fdrl.predict.WordsReader`, fitted by `fdrl train` on its own rows).
The epoch count is fixed in advance (no selection on dev), so the dev figures it prints are honest.

Spoken dialogue: with `--dailydialog`, DailyDialog's train turns join GoEmotions, each read with
its context (`encoders.text_context_turns` previous turns, `fdrl.inputs.Recipe.context`, the
same window a live stream builds). 83 % of those turns are neutral, so only a fraction of them
(`tune_text.dialogue_neutral`) is drawn afresh each epoch (`epoch_rows`): neutral stays a large
class, as it is in conversation, without drowning the emotions; GoEmotions is drawn whole.
The choice was measured against class-balanced CE and all turns (models/README.md).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes
from torch import nn

from fdrl import metrics
from fdrl.config import Config, TuneText
from fdrl.errors import UserError
from fdrl.losses import masked_mean
from fdrl.outputs import check_outputs, write_atomic
from fdrl.skips import SkipLog
from fdrl.text import TEXT_DIM, TextEncoder, run_layers

log = logging.getLogger(__name__)


@dataclass
class Tokens:
    """A corpus as the tuned layers see it: the frozen layers' output, one fp16 array per text."""

    states: list[np.ndarray]     # [L_i, 384]: the turn's tokens, then its context's (`TokenRow`)
    labels: np.ndarray           # [N] int
    own: np.ndarray | None = None      # [N] how many leading tokens are the turn's own (None: all)
    thinned: np.ndarray | None = None  # [N] bool: rows drawn only in part each epoch (`epoch_rows`)

    def own_mask(self, idx: np.ndarray, length: int) -> torch.Tensor:
        """[B, length] True on each row's own tokens: what the head pools (context is only attended to)."""
        own = np.array([len(self.states[i]) if self.own is None else self.own[i] for i in idx])
        return torch.arange(length)[None, :] < torch.from_numpy(own)[:, None]

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        L = max(len(self.states[i]) for i in idx)
        x = torch.zeros(len(idx), L, TEXT_DIM)
        mask = torch.zeros(len(idx), L, dtype=torch.bool)
        for row, i in enumerate(idx):
            x[row, : len(self.states[i])] = torch.from_numpy(self.states[i].astype(np.float32))
            mask[row, : len(self.states[i])] = True
        return x, mask


def frozen_states(encoder: TextEncoder, texts: Sequence[str], labels: Sequence[int], n_frozen: int,
                  chunk: int = 4096, progress: Callable[[int], None] | None = None,
                  contexts: Sequence[Sequence[str]] | None = None) -> Tokens:
    """Run the bottom `n_frozen` layers once over `texts` (`TextEncoder.tokenize`, with each text's
    context when given: the tokenization the live encoder uses), kept in fp16, context tokens included."""
    states: list[np.ndarray] = []
    own: list[int] = []
    for start in range(0, len(texts), chunk):
        rows = encoder.tokenize(texts[start:start + chunk], contexts[start:start + chunk] if contexts else None)
        states += [s.astype(np.float16) for s in encoder.states(rows, layers=n_frozen)]
        own += [row.own for row in rows]
        if progress:
            progress(len(rows))
    return Tokens(states, np.asarray(labels, dtype=np.int64), np.asarray(own, dtype=np.int64))


def join(*parts: Tokens) -> Tokens:
    """Corpora as one training set; rows marked `thinned` keep their mark."""
    def column(name: str, default) -> np.ndarray:
        return np.concatenate([getattr(t, name) if getattr(t, name) is not None else default(t) for t in parts])
    return Tokens([s for t in parts for s in t.states], np.concatenate([t.labels for t in parts]),
                  column("own", lambda t: np.array([len(s) for s in t.states], dtype=np.int64)),
                  column("thinned", lambda t: np.zeros(len(t.states), dtype=bool)))


def epoch_rows(tokens: Tokens, keep: float, rng: np.random.Generator) -> np.ndarray:
    """One epoch's rows: every row not `thinned`, and round(keep * n) of the n thinned rows, drawn
    afresh each epoch without replacement (over the epochs the model still sees all of them)."""
    if tokens.thinned is None or keep >= 1.0:
        return np.arange(len(tokens.states))
    thinned = np.flatnonzero(tokens.thinned)
    drawn = rng.choice(thinned, int(round(keep * len(thinned))), replace=False)
    return np.sort(np.concatenate([np.flatnonzero(~tokens.thinned), drawn]))


def epoch_counts(tokens: Tokens, keep: float, n_classes: int) -> np.ndarray:
    """Expected rows per class in one epoch of `epoch_rows(tokens, keep)`."""
    thinned = tokens.thinned if tokens.thinned is not None else np.zeros(len(tokens.labels), dtype=bool)
    count = lambda rows: np.bincount(tokens.labels[rows], minlength=n_classes).astype(np.float64)
    return count(~thinned) + min(keep, 1.0) * count(thinned)


def balanced_weights(counts: np.ndarray) -> torch.Tensor:
    """Class-balanced cross-entropy weights n / (C * n_c) from class counts; an absent class weighs 0."""
    w = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1e-12)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def _batches(tokens: Tokens, size: int, rng: np.random.Generator | None, rows: np.ndarray | None = None) -> list[np.ndarray]:
    """Batches of `rows` (default: all) of similar lengths (less padding), in random order when training."""
    rows = np.arange(len(tokens.states)) if rows is None else rows
    lengths = np.array([len(tokens.states[i]) for i in rows], dtype=np.float64)
    if rng is not None:
        lengths += rng.uniform(0, 3, len(lengths))  # jitter: batches differ from epoch to epoch
    order = rows[np.argsort(lengths, kind="stable")]
    batches = [order[i:i + size] for i in range(0, len(order), size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


class _Head(nn.Module):
    def __init__(self, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(TEXT_DIM, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(masked_mean(x, mask)))


def _logits(layers: nn.ModuleList, head: _Head, tokens: Tokens, idx: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """The head over the turn's own tokens; the context's tokens are keys of the tuned layers only."""
    x, mask = (t.to(device) for t in tokens.batch(idx))
    return head(run_layers(layers, x, mask), tokens.own_mask(idx, x.shape[1]).to(device))


@torch.no_grad()
def _predict(layers: nn.ModuleList, head: _Head, tokens: Tokens, device: str = "cpu") -> np.ndarray:
    return predict_proba(layers, head, tokens, device).argmax(1)


@torch.no_grad()
def predict_proba(layers: nn.ModuleList, head: _Head, tokens: Tokens, device: str = "cpu") -> np.ndarray:
    """[N, C] posteriors of the tuning head (for reports: how confident it is, not only what it says)."""
    layers.eval(), head.eval()
    out = np.zeros((len(tokens.states), head.fc.out_features), dtype=np.float32)
    for idx in _batches(tokens, 128, None):
        out[idx] = _logits(layers, head, tokens, idx, device).softmax(1).float().cpu().numpy()
    return out


def scores(y: np.ndarray, pred: np.ndarray, prefix: str, neutral: int | None = None) -> dict[str, float]:
    """Macro-F1 and accuracy; with `neutral`, also macro-F1 over the other classes (the usual
    DailyDialog figure: neutral predictions still cost the emotions their recall)."""
    out = {f"{prefix}_macro_f1": metrics.macro_f1(y, pred), f"{prefix}_war": metrics.war(y, pred)}
    if neutral is not None:
        emotions = [int(c) for c in np.unique(y) if c != neutral]
        from sklearn.metrics import f1_score
        out[f"{prefix}_macro_f1_emotions"] = float(f1_score(y, pred, labels=emotions, average="macro", zero_division=0))
    return out


def tune(encoder: TextEncoder, train: Tokens, n_classes: int, o: TuneText, dev: Tokens | None = None,
         on_epoch: Callable[[int, dict[str, float]], None] | None = None,
         dialogue_dev: Tokens | None = None, neutral: int | None = None, device: str = "cpu",
         keep: dict[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    """Fine-tune copies of the top `o.layers` layers on `train` (from `frozen_states`); returns their
    weights under the network's own names (`layers.4.q.weight`, ...), ready for `fdrl.text.load_tuned`.

    Each epoch draws `epoch_rows(train, o.dialogue_neutral)`; with `o.balanced` the class weights
    are those of the rows an epoch draws (expected counts), not of the whole pool. `dev` (GoEmotions)
    and `dialogue_dev` (DailyDialog validation; `neutral` names its neutral class) are scored after
    every epoch. `keep`, when given, receives the tuned layers and the head (for reports on test sets)."""
    torch.manual_seed(o.seed)
    rng = np.random.default_rng(o.seed)
    n = len(encoder.net.layers)
    layers = nn.ModuleList(copy.deepcopy(layer) for layer in encoder.net.layers[n - o.layers:]).float().to(device)
    head = _Head(n_classes, o.dropout).to(device)
    weight = balanced_weights(epoch_counts(train, o.dialogue_neutral, n_classes)).to(device) if o.balanced else None
    matrices = [p for p in layers.parameters() if p.ndim > 1]
    others = [p for p in layers.parameters() if p.ndim <= 1]  # biases and LayerNorms: no weight decay
    opt = torch.optim.AdamW([{"params": matrices, "lr": o.lr, "weight_decay": o.weight_decay},
                             {"params": others, "lr": o.lr, "weight_decay": 0.0},
                             {"params": list(head.parameters()), "lr": 10 * o.lr, "weight_decay": o.weight_decay}])
    steps = o.epochs * math.ceil(len(epoch_rows(train, o.dialogue_neutral, np.random.default_rng(0))) / o.batch_size)
    warm = max(1, int(o.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    y = torch.from_numpy(train.labels).to(device)
    for epoch in range(o.epochs):
        layers.train(), head.train()
        total = 0.0
        rows = epoch_rows(train, o.dialogue_neutral, rng)
        for idx in _batches(train, o.batch_size, rng, rows):
            loss = F.cross_entropy(_logits(layers, head, train, idx, device), y[idx], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*layers.parameters(), *head.parameters()], 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        report = {"loss": total / len(rows)}
        if dev is not None:
            report |= scores(dev.labels, _predict(layers, head, dev, device), "dev")
        if dialogue_dev is not None:
            report |= scores(dialogue_dev.labels, _predict(layers, head, dialogue_dev, device), "dialogue_dev", neutral)
        if on_epoch:
            on_epoch(epoch, report)
    if keep is not None:
        keep.update(layers=layers, head=head)
    return {f"layers.{n - o.layers + i}.{k}": v.detach().cpu().clone()
            for i, layer in enumerate(layers) for k, v in layer.state_dict().items()}


def save(path: Path, weights: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """float16 safetensors (what `encoders.text_tuned` points at), written atomically (fdrl.outputs)."""
    write_atomic(path, safetensors_bytes({k: v.half().contiguous() for k, v in weights.items()}, metadata=metadata))


def tune_command(cfg: Config, goemotions: Path, out: Path, skips: SkipLog | None = None,
                 dailydialog: Path | None = None) -> dict:
    """Tune on GoEmotions train (single-label rows), and DailyDialog train when given, as
    `cfg.tune_text` says; report GoEmotions dev (and DailyDialog validation) after every epoch, save
    the layers to `out`. DailyDialog turns are read with `encoders.text_context_turns` turns of
    context; its test split is never read here (it is for the final report only).

    `out` is checked before any work; a TSV row that cannot be used goes to `skips` (default:
    strict, the first one is a UserError) and the result counts them.
    """
    from fdrl.data import load_dailydialog, load_goemotions
    from fdrl.inputs import Recipe
    from fdrl.progress import progress

    o = cfg.tune_text
    o.check()
    labels = list(cfg.labels.names)
    index = {name: i for i, name in enumerate(labels)}
    skips = skips if skips is not None else SkipLog()
    cap = cfg.encoders.text_max_chars
    train_items = load_goemotions(Path(goemotions) / "train.tsv", skips=skips, max_text_chars=cap)
    dev_items = (load_goemotions(Path(goemotions) / "dev.tsv", skips=skips, max_text_chars=cap)
                 if (Path(goemotions) / "dev.tsv").is_file() else [])
    dialogue = ({"dialogue": load_dailydialog(dailydialog, "train", skips, cap),
                 "dialogue_dev": load_dailydialog(dailydialog, "validation", skips, cap)} if dailydialog else {})
    check_outputs({"--out": out}, [goemotions, *([dailydialog] if dailydialog else [])])
    log.info("GoEmotions: %d train and %d dev rows; DailyDialog: %d train and %d validation turns; "
             "tuning the top %d layers for %d epochs", len(train_items), len(dev_items),
             len(dialogue.get("dialogue", [])), len(dialogue.get("dialogue_dev", [])), o.layers, o.epochs)
    unknown = sorted({it.label for it in train_items + dev_items + [t for d in dialogue.values() for t in d]} - set(index))
    if unknown:
        raise UserError(f"GoEmotions labels {unknown} are not in labels.names {labels}: add them to config.toml")
    encoder = TextEncoder(cfg.encoders.text_model, "cpu", cfg.encoders.text_max_tokens)  # the pretrained layers
    n_frozen = len(encoder.net.layers) - o.layers
    recipe = Recipe.from_config(cfg)  # the context window the live engine and `fdrl train` build
    corpora = {}
    for name, items in (("train", train_items), ("dev", dev_items), *dialogue.items()):
        if items:
            contexts = [recipe.context(it.context) for it in items] if name in dialogue else None
            with progress(f"frozen layers ({name})", len(items)) as advance:
                corpora[name] = frozen_states(encoder, [it.text for it in items], [index[it.label] for it in items],
                                              n_frozen, progress=advance, contexts=contexts)
    train = corpora["train"]
    if "dialogue" in corpora:  # its neutral turns are the ones each epoch thins (tune_text.dialogue_neutral)
        talk = corpora["dialogue"]
        talk.thinned = talk.labels == index["neutral"]
        train = join(train, talk)
    history: list[dict[str, float]] = []

    def on_epoch(epoch: int, report: dict[str, float]) -> None:
        history.append(report)
        advance(1)
        parts = [f"epoch {epoch + 1}: loss {report['loss']:.3f}"]
        if "dev_macro_f1" in report:
            parts.append(f"GoEmotions dev macro-F1 {report['dev_macro_f1']:.3f}, accuracy {100 * report['dev_war']:.1f}%")
        if "dialogue_dev_macro_f1" in report:
            parts.append(f"DailyDialog validation macro-F1 {report['dialogue_dev_macro_f1']:.3f} "
                         f"({report['dialogue_dev_macro_f1_emotions']:.3f} without neutral), "
                         f"accuracy {100 * report['dialogue_dev_war']:.1f}%")
        log.info("  ".join(parts))

    with progress("tuning", o.epochs) as advance:
        weights = tune(encoder, train, len(labels), o, corpora.get("dev"), on_epoch,
                       corpora.get("dialogue_dev"), index.get("neutral"))
    result = {"options": dataclasses.asdict(o), "context_turns": recipe.context_turns, "n_train": len(train_items),
              "n_dev": len(dev_items), "n_dialogue": len(dialogue.get("dialogue", [])),
              "n_dialogue_dev": len(dialogue.get("dialogue_dev", [])), **skips.summary(), "epochs": history}
    save(out, weights, {"fdrl": json.dumps(result)})
    log.info("saved the tuned layers to %s", out)
    return result
