"""The `fdrl` command re-executes itself under jemalloc when it is installed (stream/process.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stream.process import jemalloc_path

PROBE = ("from stream.process import reexec_with_jemalloc; reexec_with_jemalloc(); "
         "print(os.getpid(), 'jemalloc' in open('/proc/self/maps').read())")


def probe(**env: str) -> tuple[int, bool]:
    out = subprocess.run([sys.executable, "-c", "import os; " + PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}, timeout=60).stdout.split()
    return int(out[0]), out[1] == "True"


@pytest.mark.skipif(jemalloc_path() is None or not sys.platform.startswith("linux"), reason="libjemalloc2 not installed")
def test_reexec_loads_jemalloc_once_and_can_be_turned_off():
    env = {"LD_PRELOAD": "", "FDRL_MALLOC": ""}
    assert probe(**env)[1]                             # re-executed with it (and only once: the probe returned)
    assert not probe(**{**env, "FDRL_MALLOC": "system"})[1]


def test_without_the_library_nothing_changes(monkeypatch):
    monkeypatch.setattr("stream.process.SEARCH", ())
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("must not re-execute"))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("FDRL_MALLOC", raising=False)
    from stream.process import reexec_with_jemalloc
    reexec_with_jemalloc()
