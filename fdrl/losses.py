"""FDRL's losses as pure functions on tensors: task, fine-grained alignment, disparity, predictor.

Every function takes plain tensors (no model, no config) so each can be checked by hand and with
`torch.autograd.gradcheck`. Masks are bool, True = valid. A loss with nothing to average over
(no labelled sample, fewer than two words, no sample with both modalities) is a zero, never NaN,
so a batch that happens to lack a modality still trains on the rest.

The two masked helpers at the top are shared with `fdrl.model`: padding must never leak, and an
all-padding row (an absent modality) must give zeros rather than NaN.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(y: np.ndarray, n_classes: int, sample_weight: np.ndarray | None = None) -> torch.Tensor:
    """'Balanced' weights (n / (C * count)), so rare classes count as much as frequent ones (UAR).
    Unknown labels (-1) are not counted; an absent class weighs 0. `sample_weight`: each sample
    counts this much (how likely it is to be drawn), so the weights balance what training sees."""
    known = y >= 0
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)[known]
    counts = np.bincount(y[known], weights=w, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim that gives padded entries exactly 0 and an all-padded row all zeros."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores.softmax(-1) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [..., T, D] over the valid steps of mask [..., T]; zeros where no step is valid."""
    x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
    return x.sum(-2) / mask.sum(-1, keepdim=True).clamp(min=1).to(x.dtype)


def span_mean(x: torch.Tensor, rows: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Mean of x[rows[i], start[i]:end[i]] for every span i: x [B, T, D] -> [N, D].

    Prefix sums make each span O(1), so a batch of many words never builds an [N, T, D] gather.
    Spans must be non-empty and inside [0, T] (`fdrl.model.collate` guarantees it).
    """
    csum = F.pad(x.cumsum(1), (0, 0, 1, 0))                                  # [B, T+1, D], csum[:, t] = sum of x[:, :t]
    length = (end - start).clamp(min=1).unsqueeze(-1).to(x.dtype)
    return (csum[rows, end] - csum[rows, start]) / length


def task_loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of logits [B, C] against labels y [B]; y == -1 (unknown) is ignored.

    `weight` [C] are optional class weights (torch's weighted mean: sum w_y * ce / sum w_y).
    """
    known = y >= 0
    if not known.any():
        return logits.new_zeros(())
    return F.cross_entropy(logits[known], y[known], weight=weight)


def word_alignment_loss(audio_words: torch.Tensor, text_words: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between the N words' audio vectors [N, d] and text vectors [N, d].

    Word i's audio should be closer (cosine / temperature) to word i's text than to any other word
    in the batch, and vice versa. Fewer than two words leave no negatives: the loss is 0.
    """
    n = audio_words.shape[0]
    if n < 2:
        return audio_words.new_zeros(())
    a = F.normalize(audio_words, dim=-1)
    t = F.normalize(text_words, dim=-1)
    logits = a @ t.T / temperature                                          # [N, N], positives on the diagonal
    target = torch.arange(n, device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def soft_alignment_loss(text: torch.Tensor, text_mask: torch.Tensor,
                        audio: torch.Tensor, audio_mask: torch.Tensor) -> torch.Tensor:
    """Alignment without timestamps: each text token attends over its own sample's audio frames.

    text [B, Tq, d] are the queries, audio [B, Tk, d] the keys and values (scaled dot-product,
    padded frames masked). The loss is the mean of 1 - cos(token, attended audio summary) over
    valid tokens of samples that have both modalities; 0 when no sample has both.
    (The argument names say text/audio; the model also uses it for vision frames against either.)
    """
    scores = text @ audio.transpose(1, 2) / math.sqrt(text.shape[-1])       # [B, Tq, Tk]
    attn = masked_softmax(scores, audio_mask.unsqueeze(1))
    summary = attn @ audio                                                  # [B, Tq, d]
    valid = text_mask & audio_mask.any(1, keepdim=True)
    if not valid.any():
        return text.new_zeros(())
    return (1.0 - F.cosine_similarity(text, summary, dim=-1))[valid].mean()


def disparity_loss(shared: torch.Tensor, private: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Soft orthogonality: mean over valid positions of cos(shared, private)^2.

    Works on any leading shape: frames [B, T, d] with mask [B, T] (a modality's shared vs private
    frame) or pooled vectors [B, d] with mask [B] (one modality's private vs another's). 0 if no
    position is valid.
    """
    if not mask.any():
        return shared.new_zeros(())
    cos = F.cosine_similarity(shared, private, dim=-1, eps=1e-8)
    return cos[mask].square().mean()


def predictor_loss(stream_logits: dict[str, torch.Tensor], y: torch.Tensor, present: dict[str, torch.Tensor],
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of every stream's logits [B, C] over the samples where the stream exists.

    `present[name]` [B] bool says which samples have the stream's modality; y == -1 is ignored.
    One mean over all (stream, sample) pairs, so each stream counts in proportion to its samples.
    """
    logits, labels = [], []
    for name, z in stream_logits.items():
        keep = present[name] & (y >= 0)
        logits.append(z[keep])
        labels.append(y[keep])
    if sum(len(t) for t in labels) == 0:
        return torch.zeros((), device=y.device)
    return F.cross_entropy(torch.cat(logits), torch.cat(labels), weight=weight)
