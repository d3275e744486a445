"""Whisper's encoder in torch, loaded from the CTranslate2 weights, with every layer's states.

CTranslate2 returns the encoder's last layer only, which Whisper trained for ASR; the layers
below it are known to carry more of a voice's paralinguistic information (pitch, timbre, effort).
This port reads the same `model.bin` faster-whisper loads (no second copy of the weights, nothing
downloaded) and runs Radford et al.'s encoder as written: two GELU convolutions (the second with
stride 2: 20 ms per state), sinusoidal positions, pre-LN Transformer blocks, a final LayerNorm.
`tests/test_whisper_encoder.py` checks its last layer against CTranslate2's on generated speech.

`CT2Reader` parses CTranslate2's binary model format (version 6: a header, then each variable as
name, shape, dtype and raw bytes), enough for a Whisper encoder stored in float16 or float32.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# CTranslate2's DataType enum, for the storage types a converted Whisper uses.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
# A `Block`'s parameters and their names inside each `encoder/layer_N/` of a CTranslate2 model.
_BLOCK_NAMES = {
    "attn_ln.weight": "self_attention/layer_norm/gamma", "attn_ln.bias": "self_attention/layer_norm/beta",
    "qkv.weight": "self_attention/linear_0/weight", "qkv.bias": "self_attention/linear_0/bias",
    "out.weight": "self_attention/linear_1/weight", "out.bias": "self_attention/linear_1/bias",
    "mlp_ln.weight": "ffn/layer_norm/gamma", "mlp_ln.bias": "ffn/layer_norm/beta",
    "mlp.0.weight": "ffn/linear_0/weight", "mlp.0.bias": "ffn/linear_0/bias",
    "mlp.2.weight": "ffn/linear_1/weight", "mlp.2.bias": "ffn/linear_1/bias",
}


class CT2Reader:
    """The variables of a CTranslate2 `model.bin` (format version 6), as numpy arrays by name."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            version = self._u(f, "I")
            if version != 6:
                raise ValueError(f"{path}: CTranslate2 model format version {version}; this reader knows version 6")
            self.spec = self._string(f)
            self.revision = self._u(f, "I")
            self.variables: dict[str, np.ndarray] = {}
            for _ in range(self._u(f, "I")):
                name = self._string(f)
                shape = [self._u(f, "I") for _ in range(self._u(f, "B"))]
                dtype, size = self._u(f, "B"), self._u(f, "I")
                raw = f.read(size)
                if dtype in _DTYPES:  # a bfloat16 or int8 decoder table is skipped; the encoder never uses one
                    self.variables[name] = np.frombuffer(raw, _DTYPES[dtype]).reshape(shape)

    @staticmethod
    def _u(f: BinaryIO, fmt: str) -> int:
        return struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]

    @classmethod
    def _string(cls, f: BinaryIO) -> str:
        return f.read(cls._u(f, "H")).decode("utf-8").rstrip("\0")


class Block(nn.Module):
    """One pre-LN encoder block: self-attention, then a GELU MLP, each around a residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_ln = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)  # CTranslate2 stores Q, K, V fused; K's bias is zero
        self.out = nn.Linear(dim, dim)
        self.mlp_ln = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_ln(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.out(a)
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    """Log-mel [B, n_mels, 2T] -> the states after each block [B, T, D] (and after the final LayerNorm)."""

    def __init__(self, n_mels: int, dim: int, heads: int, layers: int, positions: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(positions, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(dim)

    @classmethod
    def from_ct2(cls, folder: Path) -> WhisperEncoder:
        """The encoder of a CTranslate2 Whisper folder (its `model.bin`), in float32, in eval mode."""
        v = CT2Reader(Path(folder) / "model.bin").variables
        conv1, pos = v["encoder/conv1/weight"], v["encoder/position_encodings/encodings"]
        layers = sum(1 for n in v if n.startswith("encoder/layer_") and n.endswith("/ffn/linear_0/weight"))
        model = cls(n_mels=conv1.shape[1], dim=conv1.shape[0], heads=int(v["encoder/num_heads"]),
                    layers=layers, positions=pos.shape[0])
        names = {"conv1.weight": "encoder/conv1/weight", "conv1.bias": "encoder/conv1/bias",
                 "conv2.weight": "encoder/conv2/weight", "conv2.bias": "encoder/conv2/bias",
                 "positions": "encoder/position_encodings/encodings",
                 "ln_post.weight": "encoder/layer_norm/gamma", "ln_post.bias": "encoder/layer_norm/beta"}
        names |= {f"blocks.{i}.{ours}": f"encoder/layer_{i}/{theirs}" for i in range(layers) for ours, theirs in _BLOCK_NAMES.items()}
        model.load_state_dict({k: torch.from_numpy(v[n].astype(np.float32)) for k, n in names.items()})
        return model.eval()

    def forward(self, mel: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """States after blocks 1 .. `upto` (all by default); with all blocks, the last item is after
        the final LayerNorm (CTranslate2's output). The input may be shorter than a 30-s window."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        if x.shape[1] > self.positions.shape[0]:
            raise ValueError(f"{x.shape[1]} encoder states exceed the {self.positions.shape[0]} positions Whisper has")
        x = x + self.positions[:x.shape[1]]
        states = []
        for block in self.blocks[:upto]:
            x = block(x)
            states.append(x)
        if upto is None or upto >= len(self.blocks):
            states[-1] = self.ln_post(x)
        return states

