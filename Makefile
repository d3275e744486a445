# Two entry points: `make demo` (set up, then run the pipeline on the committed demo session)
# and `make test` (set up, then run the test suite). Everything else is a dependency of those.
#
# FDRL_TORCH picks the torch requirement. The default takes the normal wheel from PyPI (CUDA
# build on Linux); FDRL_TORCH="torch==2.13.0" takes the local CPU build. VENV picks the virtual
# environment, so both torch builds can live side by side, as CI runs them (.ci/run):
# `FDRL_TORCH="torch==2.13.0" make test`, then `VENV=.venv-cuda make test`.
PYTHON ?= python3
FDRL_TORCH ?= torch
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extras: `ray` (fdrl predict --ray, tested on a local Ray) and `cuda` (CUDA 12 cuBLAS for Whisper on a GPU,
# pyproject.toml) where a GPU driver is installed.
EXTRAS ?= dev,ray$(if $(shell command -v nvidia-smi 2>/dev/null),$(comma)cuda)
comma := ,
SYSTEM_PACKAGES := libportaudio2 libjemalloc2 espeak-ng chromium chromium-driver

.PHONY: demo test setup system-packages clean

# The demo: replay the committed session through the whole pipeline (VAD, Whisper, FDRL, UI),
# then score the default checkpoint on the same clips. Outputs go to demo/out/ (not committed).
demo: setup
	$(BIN)/fdrl replay demo/session/audio.wav --jsonl demo/out/events.jsonl --plot demo/out/timeline.png
	$(BIN)/fdrl eval --manifest demo/manifest.jsonl --plot demo/out/confusion.png

test: setup
	$(BIN)/python -m pytest

setup: system-packages $(STAMP)

# Debian/Ubuntu libraries: PortAudio for the microphone, jemalloc for flat memory in long sessions
# (stream/process.py), espeak-ng for generated test speech, Chromium and its WebDriver for the test of
# `fdrl serve`'s browser page (tests/test_serve.py).
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing system packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "missing system packages:$$missing -- install them with: sudo apt-get install$$missing" >&2; \
		if [ -n "$$CI" ]; then exit 1; fi; \
	fi

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(FDRL_TORCH)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache
