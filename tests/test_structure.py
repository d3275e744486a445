"""The shape of the code, checked: what the live path loads, and that the recipe exists once."""
from __future__ import annotations

import json
import subprocess
import sys

TRAINING = ("fdrl.train", "fdrl.tune_text", "fdrl.evaluate", "fdrl.data", "fdrl.metrics", "fdrl.features")


def test_the_live_path_loads_no_training_code(tiny_checkpoint):
    """A recognizer needs the model, its encoders and the input recipe; nothing that trains or scores."""
    code = f"""
import json, sys
from pathlib import Path
from fdrl import config
import stream.cli, stream.pipeline, stream.session, stream.sources, stream.ui
from stream.inference import Engine
Engine(config.load(), Path({str(tiny_checkpoint)!r}), device="cpu").warmup()
print(json.dumps(sorted(m for m in sys.modules if m in {TRAINING!r})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_every_numeric_config_key_has_a_range_with_both_ends():
    """One source of truth: each key's range lives in fdrl/config.py, and no number is unbounded."""
    import dataclasses
    import math
    from typing import get_type_hints

    from fdrl import config
    cfg = config.load()
    for section in cfg.to_dict():
        cls = type(getattr(cfg, section))
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float):
                allowed = f.metadata.get("range") or f.metadata.get("choices")
                assert allowed, f"{section}.{f.name} has no range"
                assert all(math.isfinite(v) for v in allowed), f"{section}.{f.name}: {allowed}"


def test_stage_options_are_the_config_sections_themselves():
    """The segmenter takes `[vad]` as it is: no copy of its fields with other defaults."""
    from fdrl import config, vad
    assert not hasattr(vad, "VadOptions")
    cfg = config.load()
    assert vad.Segmenter(cfg.vad, is_speech=lambda pcm: False).options is cfg.vad
