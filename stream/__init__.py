"""fdrl-stream's pipeline and its library entry points.

    from stream import recognize_file          # one file, synchronously: its final utterances
    from stream.pipeline import Recognizer     # streaming, async: any number of live sources

The entry points are imported on first use, so `fdrl --help` does not wait for torch.
"""
from __future__ import annotations

from typing import Any

_LAZY = {"recognize_file": "stream.batch", "predict_files": "stream.batch", "Recognizer": "stream.pipeline"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stream' has no attribute {name!r}")


__all__ = list(_LAZY)
