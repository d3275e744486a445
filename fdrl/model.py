"""FDRL: Fine-grained Disentangled Representation Learning (Sun et al., ICASSP 2024, arXiv 2312.13567).

Each modality m's sequence x_m is projected to d_model and encoded twice: by the modality-SHARED
encoder (one set of weights for every modality; a learned modality embedding tells it which one it
reads) and by the modality-PRIVATE encoder of m. Both keep the time axis, so the losses can act on
frames and tokens ("fine-grained"):

    alignment  pulls the shared representations of the same content together across modalities,
    disparity  pushes each frame's shared and private vectors apart, and private spaces apart,
    predictor  asks every shared/private stream to predict the emotion from its frames alone.

The fused prediction attention-pools each stream to a vector, attention-pools that set of up to
2M vectors (absent modalities masked, so any subset of modalities works per sample) and
classifies it.

Reconstruction choices. The paper does not publish its hyper-parameters or layer details; every
choice below is ours, sized for the small frozen-encoder features this project feeds it. The
sizes come from `config.toml [model]`; the rest are the named constants below.

- Encoders: pre-LN Transformer blocks (self-attention with a key padding mask, GELU MLP of width
  MLP_RATIO * d_model), a final LayerNorm, outputs zeroed at padding. `shared_layers` and
  `private_layers` blocks (default 1 + 1): the inputs are already contextual encoder states, so
  the heads need little depth, and the training sets are small (~1.2k speech clips).
- No positional encoding: Whisper frames and MiniLM token states already carry their position;
  face features come at a low, irregular rate where order matters little.
- Inputs: LayerNorm over the raw feature dim, then a linear projection. Whisper, MiniLM and face
  features have very different scales; the norm makes the projection see comparable inputs.
- Modality embedding: a learned d_model vector added to the SHARED encoder's input only (the
  private encoders each see one modality and do not need it).
- Pooling: one learned query per stream (softmax of x . q / sqrt(d) over valid frames). Queries
  start at zero, so every pool starts as a plain masked mean.
- Fusion: the set of stream vectors, each plus a learned slot embedding (which stream it is: the
  set is otherwise order-free), pooled by one more masked attention pool, then a classifier
  MLP (LayerNorm, d -> d GELU, dropout, d -> C).
- Fine-grained predictor: linear heads (one for the shared space, one per private modality)
  applied to every frame; a stream's logits are the masked mean of its frame logits. Rows of
  samples without the modality are zeros and are excluded from the loss.
- Alignment: text <-> audio by `alignment` ("word": InfoNCE over Whisper-timestamped words;
  "soft": cross-attention); vision is always aligned "soft" (its frames attend to the audio
  frames and to the text tokens), since no word-level tie between face frames and words exists;
  "none" turns every pair off. The alignment loss is the mean of the pair terms that have a
  sample with both modalities. "soft" is a pull without negatives (it could collapse on its own);
  the task, predictor and disparity losses keep the shared space from doing so.
- Disparity: mean over modalities of the frame-level shared/private cos^2, plus the mean over
  modality pairs of cos^2 between per-sample (masked-mean) private vectors: private spaces of
  different modalities have different time bases, so they are compared pooled.
- Dropout (`dropout`): on attention weights, on both residual branches and in the classifier.
- Init: nanoGPT's N(0, 0.02) for linear weights and embeddings, zero biases.
- fusion = "concat" is a plain baseline for the ablation: per-modality projection, masked mean,
  concatenation (zeros plus a presence flag for an absent modality), classifier MLP; no
  shared/private split and no auxiliary losses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fdrl import config
from fdrl import losses as L
from fdrl.errors import UserError
from fdrl.losses import masked_mean, masked_softmax
from fdrl.prosody import PROSODY_DIM

MODALITIES = ("audio", "text", "vision")
SPACES = ("shared", "private")
FACE_DIM = 135                       # = fdrl.face.FACE_DIM (128-d features + 7 posteriors); not imported: the model needs no OpenCV
DEFAULT_DIMS = {"audio": 384 + PROSODY_DIM, "text": 384, "vision": FACE_DIM}  # config.toml's encoders
MLP_RATIO = 4                        # encoder MLP width = MLP_RATIO * d_model
INIT_STD = 0.02


# ---------------------------------------------------------------------------------------------
# Data contract


class SampleLike(Protocol):
    """What `collate` reads from a sample (`fdrl.features.Sample` satisfies it)."""

    label: int
    audio: np.ndarray | None          # [T_a, D_a] (Whisper 384 + prosody 6)
    text: np.ndarray | None           # [T_t, 384]
    vision: np.ndarray | None         # [T_v, D_v]
    word_spans: np.ndarray | None     # [W, 4] (audio_start, audio_end, text_start, text_end)


@dataclass
class Batch:
    """A padded batch. Every modality the model has is present as a key, absent rows all-False."""

    x: dict[str, torch.Tensor]        # modality -> [B, T, D_m] float32 (zero-padded)
    mask: dict[str, torch.Tensor]     # modality -> [B, T] bool, True = valid; an absent modality is an all-False row
    words: torch.Tensor               # [N, 5] int64 (batch_index, audio_start, audio_end, text_start, text_end):
                                      #   each aligned word's half-open, non-empty ranges inside the valid frames/tokens
    y: torch.Tensor                   # [B] int64 labels (-1 = unknown, e.g. at inference)

    def to(self, device: torch.device | str) -> Batch:
        return Batch({m: t.to(device) for m, t in self.x.items()}, {m: t.to(device) for m, t in self.mask.items()},
                     self.words.to(device), self.y.to(device))


def collate(samples: Sequence[SampleLike], dims: dict[str, int], length: Callable[[int], int] | None = None) -> Batch:
    """Pad the samples' features into a Batch for the modalities in `dims` (others are ignored).

    A modality no sample has still gets a [B, 1, D] zero tensor with an all-False mask, so every
    batch has the same keys. Word spans are kept only for samples with both audio and text, clipped
    to their lengths; spans left empty are dropped. `length` maps the longest sample's length to the
    padded one (masked, so the outputs do not change): a few shapes instead of one per length.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    B = len(samples)
    x, mask, lengths = {}, {}, {}
    for m in MODALITIES:
        if m not in dims:
            continue
        arrays = [getattr(s, m, None) for s in samples]
        lengths[m] = [0 if a is None else len(a) for a in arrays]
        longest = max(1, *lengths[m])
        x[m] = torch.zeros(B, length(longest) if length else longest, dims[m])
        mask[m] = torch.zeros(B, x[m].shape[1], dtype=torch.bool)
        for i, a in enumerate(arrays):
            if a is None or len(a) == 0:
                continue
            if a.ndim != 2 or a.shape[1] != dims[m]:
                raise UserError(f"sample {i}: {m} features have shape {tuple(a.shape)}, the model expects "
                                f"[T, {dims[m]}] (re-extract features with the encoders the model was trained on)")
            x[m][i, :len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
            mask[m][i, :len(a)] = True

    rows = []
    if "audio" in dims and "text" in dims:
        for i, s in enumerate(samples):
            spans = getattr(s, "word_spans", None)
            n_a, n_t = lengths["audio"][i], lengths["text"][i]
            if spans is None or n_a == 0 or n_t == 0:
                continue
            spans = np.asarray(spans, dtype=np.int64).reshape(-1, 4)
            a0, a1 = spans[:, 0].clip(0, n_a), spans[:, 1].clip(0, n_a)
            t0, t1 = spans[:, 2].clip(0, n_t), spans[:, 3].clip(0, n_t)
            keep = (a1 > a0) & (t1 > t0)
            rows.append(np.stack([np.full(keep.sum(), i), a0[keep], a1[keep], t0[keep], t1[keep]], axis=1))
    words = torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros(0, 5, dtype=torch.int64)
    y = torch.tensor([int(s.label) for s in samples], dtype=torch.int64)
    return Batch(x, mask, words, y)


@dataclass
class Output:
    logits: torch.Tensor                    # [B, C] fused
    shared: dict[str, torch.Tensor]         # modality -> [B, T, d] (zeros at padding; {} for concat)
    private: dict[str, torch.Tensor]        # modality -> [B, T, d]
    stream_logits: dict[str, torch.Tensor]  # "shared_audio", "private_text", ... -> [B, C] (zero rows where absent)


# ---------------------------------------------------------------------------------------------
# Building blocks


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x [B, h, T, d/h]
        # Padded keys get no weight. A row with no valid key at all (an absent modality) would give
        # NaN; it attends everywhere instead, and the Encoder zeroes its output anyway.
        keys = mask | ~mask.any(1, keepdim=True)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :],
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


class Block(nn.Module):
    """Pre-LN Transformer block."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, MLP_RATIO * d), nn.GELU(), nn.Linear(MLP_RATIO * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), mask))
        return x + self.drop(self.mlp(self.ln_2(x)))


class Encoder(nn.Module):
    """A stack of blocks and a final LayerNorm; [B, T, d] -> [B, T, d], zeros at padding."""

    def __init__(self, d: int, n_heads: int, n_layers: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d, n_heads, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x) * mask.unsqueeze(-1)


class AttentionPool(nn.Module):
    """Masked attention pooling with one learned query: [..., T, d] -> [..., d]; zeros if nothing is valid."""

    def __init__(self, d: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(d))  # zero query = masked mean at init

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = masked_softmax(x @ self.query / math.sqrt(x.shape[-1]), mask)
        return (w.unsqueeze(-1) * x).sum(-2)


def classifier(d_in: int, d: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, n_classes))


# ---------------------------------------------------------------------------------------------
# The model


class FDRL(nn.Module):
    """Shared + private encoders per modality, attention fusion, fine-grained heads (module docstring).

    `dims` maps each modality the model reads to its feature size; modalities not in `dims` are
    not built. `model.dims` and `model.n_classes` are kept for collate and checkpoints.
    """

    def __init__(self, cfg_model: config.Model, dims: dict[str, int], n_classes: int):
        super().__init__()
        _check(cfg_model, dims, n_classes)
        self.cfg, self.dims, self.n_classes = cfg_model, dict(dims), n_classes
        self.modalities = tuple(m for m in MODALITIES if m in dims)
        d, p = cfg_model.d_model, cfg_model.dropout
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(dims[m]), nn.Linear(dims[m], d)) for m in self.modalities})
        if cfg_model.fusion == "concat":
            self.classifier = classifier(len(self.modalities) * (d + 1), d, n_classes, p)
        else:
            self.streams = tuple(f"{s}_{m}" for s in SPACES for m in self.modalities)
            self.modality_emb = nn.ParameterDict({m: nn.Parameter(INIT_STD * torch.randn(d)) for m in self.modalities})
            self.shared = Encoder(d, cfg_model.n_heads, cfg_model.shared_layers, p)
            self.private = nn.ModuleDict({m: Encoder(d, cfg_model.n_heads, cfg_model.private_layers, p) for m in self.modalities})
            self.pool = nn.ModuleDict({k: AttentionPool(d) for k in self.streams})
            self.slot_emb = nn.Parameter(INIT_STD * torch.randn(len(self.streams), d))
            self.fuse = AttentionPool(d)
            self.classifier = classifier(d, d, n_classes, p)
            self.head_shared = nn.Linear(d, n_classes)
            self.head_private = nn.ModuleDict({m: nn.Linear(d, n_classes) for m in self.modalities})
        self.apply(_init_weights)

    def forward(self, batch: Batch) -> Output:
        """Fused logits, the shared/private sequences and the per-stream logits of a collated batch."""
        inputs = {m: self._project(batch, m) for m in self.modalities}
        if self.cfg.fusion == "concat":
            parts = []
            for m, h in inputs.items():
                present = batch.mask[m].any(1, keepdim=True)
                parts += [masked_mean(h, batch.mask[m]), present.to(h.dtype)]
            return Output(self.classifier(torch.cat(parts, -1)), {}, {}, {})

        shared, private, stream_logits, vectors, present = {}, {}, {}, [], []
        for m, h in inputs.items():
            mask = batch.mask[m]
            shared[m] = self.shared(h + self.modality_emb[m], mask)
            private[m] = self.private[m](h, mask)
            for space, seq, head in (("shared", shared[m], self.head_shared), ("private", private[m], self.head_private[m])):
                k = f"{space}_{m}"
                stream_logits[k] = masked_mean(head(seq), mask)    # fine-grained predictor: every frame votes
                vectors.append(self.pool[k](seq, mask) + self.slot_emb[self.streams.index(k)])
                present.append(mask.any(1))
        fused = self.fuse(torch.stack(vectors, 1), torch.stack(present, 1))  # [B, 2M, d] -> [B, d]
        return Output(self.classifier(fused), shared, private, stream_logits)

    def _project(self, batch: Batch, m: str) -> torch.Tensor:
        if m not in batch.x:
            raise ValueError(f"batch has no '{m}' entry: build it with collate(samples, model.dims)")
        x = batch.x[m].masked_fill(~batch.mask[m].unsqueeze(-1), 0.0)  # whatever the padding holds, it never leaks
        return self.proj[m](x)

    def loss(self, batch: Batch, out: Output, cfg_loss: config.Loss,
             class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """total = task + alpha * alignment + beta * disparity + gamma * predictor (task only for concat).

        `class_weights` [C] optionally reweight the two cross-entropies (task and predictor).
        """
        task = L.task_loss(out.logits, batch.y, class_weights)
        zero = task.new_zeros(())
        alignment = disparity = predictor = zero
        if self.cfg.fusion != "concat":
            alignment = self._alignment(batch, out, cfg_loss.temperature)
            disparity = self._disparity(batch, out)
            present = {f"{s}_{m}": batch.mask[m].any(1) for s in SPACES for m in out.shared}
            predictor = L.predictor_loss(out.stream_logits, batch.y, present, class_weights)
        total = task + cfg_loss.alpha * alignment + cfg_loss.beta * disparity + cfg_loss.gamma * predictor
        parts = {"task": task, "alignment": alignment, "disparity": disparity, "predictor": predictor}
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def _alignment(self, batch: Batch, out: Output, temperature: float) -> torch.Tensor:
        """Mean of the pair terms (text-audio, vision-audio, vision-text) that have a sample with both."""
        mode, sh, mk = self.cfg.alignment, out.shared, batch.mask
        if mode == "none":
            return out.logits.new_zeros(())

        def both(a: str, b: str) -> bool:
            return a in sh and b in sh and bool((mk[a].any(1) & mk[b].any(1)).any())

        terms = []
        if mode == "word" and both("audio", "text") and len(batch.words) >= 2:
            i, a0, a1, t0, t1 = batch.words.unbind(1)
            terms.append(L.word_alignment_loss(L.span_mean(sh["audio"], i, a0, a1), L.span_mean(sh["text"], i, t0, t1), temperature))
        if mode == "soft" and both("text", "audio"):
            terms.append(L.soft_alignment_loss(sh["text"], mk["text"], sh["audio"], mk["audio"]))
        for other in ("audio", "text"):  # vision has no word timestamps: always soft
            if both("vision", other):
                terms.append(L.soft_alignment_loss(sh["vision"], mk["vision"], sh[other], mk[other]))
        return torch.stack(terms).mean() if terms else out.logits.new_zeros(())

    def _disparity(self, batch: Batch, out: Output) -> torch.Tensor:
        mods = [m for m in out.shared if batch.mask[m].any()]
        frame = [L.disparity_loss(out.shared[m], out.private[m], batch.mask[m]) for m in mods]
        pooled = {m: masked_mean(out.private[m], batch.mask[m]) for m in mods}
        cross = [L.disparity_loss(pooled[a], pooled[b], batch.mask[a].any(1) & batch.mask[b].any(1))
                 for a, b in combinations(mods, 2)]
        zero = out.logits.new_zeros(())
        return sum(frame, zero) / max(1, len(frame)) + sum(cross, zero) / max(1, len(cross))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=INIT_STD)
        nn.init.zeros_(module.bias)


def _check(cfg: config.Model, dims: dict[str, int], n_classes: int) -> None:
    unknown = [m for m in dims if m not in MODALITIES]
    if unknown:
        raise UserError(f"unknown modality '{unknown[0]}' in the model dims (known: {', '.join(MODALITIES)})")
    if not dims:
        raise UserError("the model needs at least one modality: the training data has no audio, text or vision features")
    if n_classes < 2:
        raise UserError(f"the model needs at least 2 classes, got {n_classes} (check labels.names)")
    cfg.check()  # the `[model]` keys' ranges, defined once in fdrl/config.py
