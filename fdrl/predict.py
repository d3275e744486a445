"""Inference helpers shared by `fdrl eval`, training's validation and the live engine.

They live apart from training and evaluation so that the live path loads neither: a running
recognizer needs the device, the model's posteriors, the words reader and the face fusion, nothing that trains.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from fdrl.calibration import softmax
from fdrl.inputs import Sample
from fdrl.labels import CANONICAL
from fdrl.model import FDRL, collate

if TYPE_CHECKING:
    from fdrl.checkpoint import Checkpoint
    from fdrl.config import LateFusion


def resolve_device(name: str, warn: Callable[[str], None] | None = None) -> str:
    """The torch device for `runtime.device`: "auto" takes CUDA when there is a GPU.

    "cuda" without a usable GPU is not fatal: everything runs on the CPU, only slower, so the
    caller is told through `warn` (default: a RuntimeWarning) and gets "cpu".
    """
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        message = f"runtime.device is {name!r} but CUDA is not available: running on the CPU (slower)"
        if warn is not None:
            warn(message)
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return "cpu"
    return name


def cpu_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated.

    Even where it is native, the head runs in float32 unless `runtime.cpu_bf16` asks otherwise: it
    was slower on the Intel Xeon measured, and it needs far more memory per input shape (README "Memory").
    """
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def padded_length(n: int, bf16: bool = False) -> int:
    """The length a batch whose longest sample has `n` frames (or tokens) is padded to: a multiple of
    32, or under bf16, where each shape costs far more memory, a power of two of at least 32."""
    return max(32, 1 << (n - 1).bit_length()) if bf16 else -(-n // 32) * 32


def bucket_sizes(n: int, batch_size: int) -> list[int]:
    """Batch sizes covering `n` samples: `batch_size` chunks, then the rest as powers of two
    (13 -> 8, 4, 1), so that only a handful of batch sizes ever reach the kernels."""
    sizes = [batch_size] * (n // batch_size)
    rest = n % batch_size
    return sizes + [1 << k for k in reversed(range(rest.bit_length())) if rest >> k & 1]


@torch.inference_mode()
def predict_logits(model: FDRL, samples: Sequence[Sample], batch_size: int = 128, bf16: bool = False) -> np.ndarray:
    """Fused logits [N, C]; `bf16`: the forward pass on the CPU under bfloat16 autocast.

    Batch sizes and lengths come in a few buckets (`bucket_sizes`, `padded_length`; the padding is
    masked): oneDNN keeps kernels and buffers for every input shape it sees, and utterance lengths
    never repeat, so unbucketed shapes grew a long session (README "Memory")."""
    model.eval()
    device = next(model.parameters()).device
    out, i = [], 0
    for size in bucket_sizes(len(samples), batch_size):
        batch = collate(list(samples[i:i + size]), model.dims, length=lambda n: padded_length(n, bf16)).to(device)
        i += size
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch).logits
        out.append(logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.n_classes), np.float32)


def warm_bf16(model: FDRL, max_batch: int, max_lengths: dict[str, int]) -> None:
    """Run every bf16 shape bucket up to these sizes once (audio and text; not vision), so that a
    session builds its bf16 kernels at start-up instead of growing through its first hour."""
    def buckets(n: int) -> list[int]:
        return [1 << k for k in range(5, padded_length(n, True).bit_length())]
    audio, text = buckets(max_lengths.get("audio", 1)), buckets(max_lengths.get("text", 1))
    for size in (1 << k for k in range(max_batch.bit_length())):
        for ta in audio if "audio" in model.dims else [0]:
            for tt in text if "text" in model.dims else [0]:
                sample = Sample(-1, "", audio=np.zeros((ta, model.dims["audio"]), np.float32) if ta else None,
                                text=np.zeros((tt, model.dims["text"]), np.float32) if tt else None)
                predict_logits(model, [sample] * size, batch_size=size, bf16=True)


def predict_proba(model: FDRL, samples: Sequence[Sample], batch_size: int = 128, bf16: bool = False,
                  temperature: float = 1.0) -> np.ndarray:
    """Class posteriors [N, C] of the fused output, the logits divided by the checkpoint's calibrated
    `temperature` first (fdrl.calibration: same labels, scores that mean what they say)."""
    return softmax(predict_logits(model, samples, batch_size, bf16), temperature).astype(np.float32)


def posteriors(ckpt: Checkpoint, samples: Sequence[Sample], late: LateFusion, bf16: bool = False) -> np.ndarray:
    """What a checkpoint says of prepared samples, the same for `fdrl eval` and the live engine: FDRL's
    calibrated posteriors, words heard without a voice mixed with the words reader, faces late-fused."""
    p = predict_proba(ckpt.model, samples, bf16=bf16, temperature=ckpt.temperature)
    p = read_words(p, samples, ckpt.words_reader, late.words_weight)
    return late_fusion(p, samples, ckpt.labels, late.face_weight)


def words_alone(s: Sample) -> bool:
    """Words without a voice or a face: a transcript line, a chat message, a text manifest row."""
    return s.text is not None and s.audio is None and s.vision is None


def pooled_words(samples: Sequence[Sample]) -> np.ndarray:
    """[N, D] each sample's mean token state: what the words reader reads."""
    return np.stack([s.text.astype(np.float32).mean(0) for s in samples])


@dataclass(frozen=True)
class WordsReader:
    """softmax(weight @ mean token state + bias): a linear reader of words alone.

    Why it exists beside FDRL: on text with no voice, FDRL's text path, trained on a few thousand
    rows an epoch among the speech clips and with balanced classes, was measured below a linear
    layer over the same tuned MiniLM states (the kind of head `fdrl tune-text` tunes those layers
    with); models/README.md, "Words alone". `fdrl train` fits it on its text rows
    (`fdrl.train.fit_words_reader`); speech is labelled by FDRL alone.
    """

    weight: np.ndarray   # [C, D]
    bias: np.ndarray     # [C]

    def proba(self, samples: Sequence[Sample]) -> np.ndarray:
        return softmax(pooled_words(samples) @ self.weight.T + self.bias).astype(np.float32)


def read_words(p_model: np.ndarray, samples: Sequence[Sample], reader: WordsReader | None, weight: float) -> np.ndarray:
    """p = (1 - w) * p_fdrl + w * p_reader for words alone (`words_alone`); every other row, and
    every row of a checkpoint without a reader, keeps FDRL's posterior."""
    p = p_model.copy()
    rows = [i for i, s in enumerate(samples) if words_alone(s)]
    if reader is None or weight <= 0 or not rows:
        return p
    p[rows] = (1 - weight) * p[rows] + weight * reader.proba([samples[i] for i in rows])
    return p


def late_fusion(p_model: np.ndarray, samples: Sequence[Sample], labels: Sequence[str], face_weight: float) -> np.ndarray:
    """p = (1 - w) * p_fdrl + w * p_face for utterances where a face was seen (face posteriors are in CANONICAL order).

    A checkpoint trained on labels outside CANONICAL (a custom `labels.names`) has no face
    counterpart for them, so its probabilities pass through unfused.
    """
    p = p_model.copy()
    if not set(labels) <= set(CANONICAL):
        return p
    order = [CANONICAL.index(name) for name in labels]
    for i, s in enumerate(samples):
        if s.face_posterior is not None and face_weight > 0:
            face = s.face_posterior[order]
            p[i] = (1 - face_weight) * p[i] + face_weight * face / max(face.sum(), 1e-8)
    return p
