"""The CUDA 12 libraries CTranslate2 needs, found in their PyPI wheels and loaded before it asks.

CTranslate2 (faster-whisper's engine) opens `libcublas.so.12` by name the first time it runs on a
GPU. The default torch wheel brings CUDA 13 libraries only, so on a machine whose CUDA comes from
pip alone Whisper could not run on the GPU. `nvidia-cublas-cu12` (the `cuda` extra; an extra
because torch's CUDA wheel loads it at import even where there is no GPU) puts the libraries inside
site-packages, where the dynamic loader does not look; loading them once
by full path with RTLD_GLOBAL puts them in the process, and CTranslate2's later load by name then
finds them there. The user sets no `LD_LIBRARY_PATH`.

cuDNN is not needed: CTranslate2 uses it only up to 4.6, and the project requires 4.7 or later.
"""
from __future__ import annotations

import ctypes
import sys
import warnings
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Callable

# Each wheel with the libraries to load from it, dependencies first: libcublas needs libcublasLt.
WHEELS: dict[str, tuple[str, ...]] = {"nvidia-cublas-cu12": ("libcublasLt.so.12", "libcublas.so.12")}


def library_paths() -> list[Path]:
    """The installed wheels' libraries in load order; those of a wheel that is not installed are left out."""
    paths = []
    for wheel, names in WHEELS.items():
        try:
            files = {Path(f).name: f for f in metadata.files(wheel) or ()}
        except metadata.PackageNotFoundError:
            continue  # a system CUDA may still provide them; CTranslate2 says so if not
        for name in names:
            if name in files:
                paths.append(Path(files[name].locate()))
    return paths


@cache
def preload() -> tuple[Path, ...]:
    """Load the CUDA 12 libraries into the process once (Linux only) and return their paths.

    A library that is missing or fails to load is skipped: CTranslate2 then reports the missing
    library itself when the model goes on the GPU.
    """
    if not sys.platform.startswith("linux"):
        return ()
    loaded = []
    for path in library_paths():
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        loaded.append(path)
    return tuple(loaded)


def cublas_loadable() -> bool:
    """Whether CTranslate2's load of `libcublas.so.12` by name will succeed (after `preload`)."""
    preload()
    try:
        ctypes.CDLL("libcublas.so.12")
    except OSError:
        return False
    return True


def whisper_device(device: str, warn: Callable[[str], None] | None = None) -> str:
    """The device Whisper can run on: `device`, or the CPU when it is a GPU but CUDA 12's cuBLAS is
    missing (Whisper would fail at its first utterance). `warn` (default: a RuntimeWarning) is
    told why and how to fix it; everything else stays on the GPU."""
    if device == "cpu" or cublas_loadable():
        return device
    message = ("Whisper runs on the CPU (slower): CTranslate2 needs CUDA 12's cuBLAS on a GPU; "
               "install it with pip install 'fdrl-stream[cuda]'")
    if warn is not None:
        warn(message)
    else:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return "cpu"
