"""The face branch: converted weights, the port against independent references, the detection pipeline."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fdrl import config
from fdrl.errors import UserError
from fdrl.face import FACE_DIM, FaceAnalyzer, crop_like_fer, load_face_model, max_pool_same, pad_like_fer
from fdrl.labels import CANONICAL, FER2013

WEIGHTS = config.PROJECT_ROOT / "models" / "face-minixception.pt"

# Three fixed 64x64 inputs in [-1, 1], and the posteriors (FER2013 order) two independent
# implementations give for them, computed once by scripts/convert_face_model.py's helpers:
# KERAS: a NumPy walk of the Keras graph in fer's emotion_model.hdf5 (float64, exact up to rounding).
# TFLITE: fer's own emotion_model_quantized.tflite run by TensorFlow's runtime (int8 weights, so ~0.05 off).
KERAS = np.array([[0.105392, 0.000028, 0.006702, 0.046052, 0.015073, 0.001204, 0.82555],
                  [0.390749, 0.000231, 0.186909, 0.082164, 0.071182, 0.098281, 0.170483],
                  [0.011905, 0.0, 0.004761, 0.008603, 0.026221, 0.000898, 0.947613]])
TFLITE = np.array([[0.121063, 0.000032, 0.007278, 0.049768, 0.014783, 0.001148, 0.805928],
                   [0.384405, 0.000234, 0.193168, 0.081932, 0.071917, 0.097794, 0.17055],
                   [0.012968, 0.0, 0.00503, 0.00934, 0.025305, 0.000805, 0.946551]])


def fixed_inputs() -> np.ndarray:
    i, j = np.mgrid[0:64, 0:64] / 64
    return np.stack([np.sin(7 * i) * np.cos(5 * j), np.tanh(4 * (i - j)),
                     np.clip(1 - 8 * ((i - .5) ** 2 + (j - .5) ** 2), -1, 1)]).astype(np.float32)


def cartoon_face(scale: float = 1.0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A blurred drawn face (head, brows, eyes, nose, mouth) that OpenCV's Haar cascade does detect."""
    img = np.full(size, 90, np.uint8)
    cx, cy, s = size[1] // 2, size[0] // 2, scale
    cv2.ellipse(img, (cx, cy), (int(80 * s), int(105 * s)), 0, 0, 360, 200, -1)
    for dx in (-32, 32):
        cv2.ellipse(img, (cx + int(dx * s), cy - int(25 * s)), (int(18 * s), int(9 * s)), 0, 0, 360, 40, -1)
        cv2.line(img, (cx + int((dx - 20) * s), cy - int(45 * s)), (cx + int((dx + 20) * s), cy - int(45 * s)),
                 60, int(5 * s))
    cv2.ellipse(img, (cx, cy + int(15 * s)), (int(9 * s), int(22 * s)), 0, 0, 360, 170, -1)
    cv2.ellipse(img, (cx, cy + int(55 * s)), (int(30 * s), int(10 * s)), 0, 0, 360, 70, -1)
    return cv2.cvtColor(cv2.GaussianBlur(img, (0, 0), 3 * s), cv2.COLOR_GRAY2BGR)


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer(WEIGHTS)


def test_converted_weights_load_with_metadata() -> None:
    net, meta = load_face_model(WEIGHTS)
    assert meta["classes"] == list(FER2013) and meta["input_size"] == 64
    assert len(meta["source_sha256"]) == 64
    assert net.bn1.eps == 1e-3  # Keras BatchNormalization epsilon, not torch's 1e-5
    assert sum(p.numel() for p in net.parameters()) == 56_951  # kernels + conv bias + BN scale/shift


def test_port_matches_keras_graph_and_tflite() -> None:
    net, _ = load_face_model(WEIGHTS)
    with torch.inference_mode():
        pooled, logits = net(torch.from_numpy(fixed_inputs())[:, None])
    p = logits.softmax(-1).numpy()
    assert pooled.shape == (3, 128)
    np.testing.assert_allclose(p, KERAS, atol=2e-6)
    np.testing.assert_allclose(p, TFLITE, atol=0.05)
    assert (p.argmax(1) == TFLITE.argmax(1)).all()


def test_max_pool_same_matches_keras_rule() -> None:
    # 5 -> ceil(5/2) = 3 outputs; total pad (3-1)*2+3-5 = 2, one each side. 4 -> 2 outputs, one pad at the end.
    x = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 5, 5)
    assert max_pool_same(x)[0, 0, 0].tolist() == [1.0, 3.0, 4.0]
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    assert max_pool_same(x)[0, 0, 0].tolist() == [2.0, 3.0]


def test_crop_follows_fer_padding_and_offsets() -> None:
    gray = np.zeros((100, 120), np.uint8)
    gray[-2:] = 100                        # the border fill is the bottom-two-row mean: 100
    gray[20:60, 30:60] = 255
    padded = pad_like_fer(gray)
    assert padded.shape == (180, 200) and padded[0, 0] == 100
    # Box (x=30, y=20, w=30, h=40) is squared to x=25, w=40 and widened by 10: frame x 15..75, y 10..70.
    crop = crop_like_fer(padded, (30, 20, 30, 40))
    assert crop.shape == (64, 64) and crop.dtype == np.float32
    expected = (cv2.resize(gray[10:70, 15:75], (64, 64)).astype(np.float32) / 255 - 0.5) * 2
    np.testing.assert_allclose(crop, expected)
    assert crop.min() == -1.0 and crop.max() == 1.0


def test_blank_frame_has_no_face(analyzer: FaceAnalyzer) -> None:
    assert analyzer.analyze(np.full((480, 640, 3), 127, np.uint8)) is None


def test_cartoon_face_gives_posterior_and_features(analyzer: FaceAnalyzer) -> None:
    result = analyzer.analyze(cartoon_face())
    assert result is not None
    x, y, w, h = result.box
    assert abs(x + w / 2 - 320) < 30 and abs(y + h / 2 - 240) < 40 and w >= 48  # centred on the drawn face
    assert result.posterior.shape == (7,) and result.posterior.dtype == np.float32
    assert result.posterior.sum() == pytest.approx(1.0, abs=1e-5) and (result.posterior >= 0).all()
    assert result.features.shape == (FACE_DIM,) and result.features.dtype == np.float32
    np.testing.assert_array_equal(result.features[-7:], result.posterior)


def test_detection_on_a_smaller_copy_finds_the_same_face(analyzer: FaceAnalyzer) -> None:
    small = FaceAnalyzer(WEIGHTS, detect_width=320)
    for scale in (0.8, 1.2):
        gray = cv2.cvtColor(cartoon_face(scale), cv2.COLOR_BGR2GRAY)
        (full,), (half,) = analyzer.detect(gray), small.detect(gray)
        ix = max(0, min(full[0] + full[2], half[0] + half[2]) - max(full[0], half[0]))
        iy = max(0, min(full[1] + full[3], half[1] + half[3]) - max(full[1], half[1]))
        iou = ix * iy / (full[2] * full[3] + half[2] * half[3] - ix * iy)
        assert iou > 0.8, (scale, full, half)          # boxes come back in full-frame pixels
    assert FaceAnalyzer(WEIGHTS, min_face_px=400, detect_width=320).detect(gray) == []  # min size is in frame pixels


def test_batch_matches_single_and_keeps_order(analyzer: FaceAnalyzer) -> None:
    face, blank = cartoon_face(), np.zeros((480, 640, 3), np.uint8)
    small = cartoon_face(scale=0.6)
    results = analyzer.analyze_batch([blank, face, small, blank])
    assert results[0] is None and results[3] is None
    for frame, got in ((face, results[1]), (small, results[2])):
        alone = analyzer.analyze(frame)
        assert got is not None and alone is not None and got.box == alone.box
        np.testing.assert_allclose(got.features, alone.features, atol=1e-5)
    assert results[1].box[2] > results[2].box[2]


def test_classify_returns_canonical_order(analyzer: FaceAnalyzer) -> None:
    posterior, features = analyzer.classify(fixed_inputs())
    fer_to_canonical = [FER2013.index(name) for name in CANONICAL]
    np.testing.assert_allclose(posterior, KERAS[:, fer_to_canonical], atol=2e-6)
    assert posterior[2, CANONICAL.index("neutral")] > 0.9
    assert features.shape == (3, FACE_DIM)


def test_missing_or_bad_weights_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="convert_face_model.py"):
        FaceAnalyzer(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="convert_face_model.py"):
        FaceAnalyzer(bad)


def test_from_config_resolves_weights_and_min_face(tmp_path: Path) -> None:
    cfg = config.load(overrides=["face.min_face_px=300"])
    analyzer = FaceAnalyzer.from_config(cfg)
    assert analyzer.min_face_px == 300
    assert analyzer.analyze(cartoon_face()) is None  # the drawn face is ~230 px: below the minimum
    cfg = config.load(overrides=[f"paths.face_weights='{tmp_path / 'missing.pt'}'"])
    with pytest.raises(UserError, match="missing.pt"):
        FaceAnalyzer.from_config(cfg)
