"""RSS of the FDRL head alone over many batches of random size and length: does memory grow with
every new input shape? (README "Memory"). Usage, under the allocator `fdrl` uses:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python scripts/shape_probe.py {fp32,bf16} {plain,bucketed}

`plain` pads each batch to its longest sample only (the head before shapes were bucketed);
`bucketed` goes through `fdrl.predict.predict_logits`, as the product does."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from fdrl.checkpoint import load
from fdrl.config import load as load_config
from fdrl.inputs import Sample
from fdrl.model import collate
from fdrl.predict import predict_logits


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("precision", choices=["fp32", "bf16"])
    p.add_argument("shapes", choices=["plain", "bucketed"])
    p.add_argument("--batches", type=int, default=1500)
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config()
    model = load(cfg.resolve(cfg.paths.checkpoint)).model.eval()
    rng = np.random.default_rng(0)
    bf16 = a.precision == "bf16"
    start = rss_mb()
    for i in range(a.batches):
        samples = [Sample(-1, "", audio=np.zeros((int(rng.integers(20, 400)), model.dims["audio"]), np.float32),
                          text=np.zeros((int(rng.integers(4, 64)), model.dims["text"]), np.float32))
                   for _ in range(int(rng.integers(1, 17)))]
        if a.shapes == "bucketed":
            predict_logits(model, samples, batch_size=16, bf16=bf16)
        else:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(collate(samples, model.dims))
        if i % 250 == 0:
            print(f"batch {i}: {rss_mb():.0f} MB", flush=True)
    print(f"{a.precision} {a.shapes}: {start:.0f} MB after loading, {rss_mb():.0f} MB after {a.batches} batches")


if __name__ == "__main__":
    main()
