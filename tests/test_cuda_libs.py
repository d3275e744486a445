"""The CUDA 12 cuBLAS that CTranslate2 opens by name is found in its wheel (the `cuda` extra) and loads,
without LD_LIBRARY_PATH and without a GPU (loading a library runs no CUDA code); without it Whisper
falls back to the CPU and says how to fix it."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata

import pytest

from fdrl import cuda_libs
from fdrl.config import PROJECT_ROOT

def _extra_installed() -> bool:
    try:
        metadata.distribution("nvidia-cublas-cu12")
    except metadata.PackageNotFoundError:
        return False
    return True


needs_extra = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() == "x86_64"
                                      and _extra_installed()),
                                 reason="the `cuda` extra (nvidia-cublas-cu12, Linux x86_64) is not installed")


@needs_extra
def test_the_wheel_holds_every_library_to_load():
    paths = cuda_libs.library_paths()
    assert [p.name for p in paths] == [name for names in cuda_libs.WHEELS.values() for name in names]
    assert all(p.is_file() for p in paths)


@needs_extra
def test_after_preload_ctranslate2s_load_by_name_succeeds():
    # A fresh process, so that nothing loaded earlier helps; loading by bare name is what
    # CTranslate2 does, and it fails without the preload (the loader never looks in site-packages).
    probe = ("import ctypes, sys\n"
             "from fdrl import cuda_libs\n"
             "try:\n"
             "    ctypes.CDLL('libcublas.so.12')\n"
             "    sys.exit(print('system'))\n"
             "except OSError:\n"
             "    pass\n"
             "loaded = cuda_libs.preload()\n"
             "ctypes.CDLL('libcublas.so.12')\n"
             "print(len(loaded))\n")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.strip() == "system":
        pytest.skip("a system CUDA 12 provides libcublas.so.12: the preload cannot be told apart here")
    assert int(proc.stdout) == len(cuda_libs.library_paths())


def test_on_a_gpu_without_the_cuda_extra_whisper_runs_on_the_cpu_and_says_how_to_fix_it(monkeypatch):
    warned: list[str] = []
    monkeypatch.setattr(cuda_libs, "cublas_loadable", lambda: False)
    assert cuda_libs.whisper_device("cuda", warned.append) == "cpu"
    assert len(warned) == 1 and "fdrl-stream[cuda]" in warned[0]
    assert cuda_libs.whisper_device("cpu", warned.append) == "cpu" and len(warned) == 1
    monkeypatch.setattr(cuda_libs, "cublas_loadable", lambda: True)
    assert cuda_libs.whisper_device("cuda", warned.append) == "cuda" and len(warned) == 1
