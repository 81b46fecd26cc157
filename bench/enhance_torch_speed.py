"""Seconds per megapixel of the torch reference enhancer on CUDA, Apple MPS or CPU; prints JSON.

The GPU path of `clipalbum enhance` follows this reference (head, global correction, noise map, UNet
sampling), untiled, on a synthetic noisy 12 MP photo; fp32 and bf16 autocast side by side, 1 and 4 steps.

    python bench/enhance_torch_speed.py RUN_DIR [--device cuda] [--megapixels 12] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from clipalbum.training.enhance.reference import enhance_tensor
from clipalbum.training.enhance.trainer import load_enhancer
from clipalbum.training.trainer import pick_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = pick_device(args.device)
    unet, head, cfg, _ = load_enhancer(args.run, device)
    h = int((args.megapixels * 1e6 * 3 / 4) ** 0.5)
    w = int(h * 4 / 3)
    gen = torch.Generator(device=device).manual_seed(0)
    photo = (torch.rand((1, 3, h, w), generator=gen, device=device) * 0.5 + 0.25
             + torch.randn((1, 3, h, w), generator=gen, device=device) * 0.06).clamp(0, 1)
    embedding = torch.zeros((1, cfg.unet.embed_dim), device=device)
    results = []
    for precision in ("fp32", "bf16"):
        if precision == "bf16" and device.type == "cpu":
            continue
        for steps in (1, 4):
            autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
            times = []
            for i in range(args.repeat + 1):
                sync(device)
                start = time.perf_counter()
                with autocast:
                    enhance_tensor(unet, head, photo, embedding, steps=steps)
                sync(device)
                if i:  # the first run warms up kernels and allocations
                    times.append(time.perf_counter() - start)
            best = min(times)
            results.append({"precision": precision, "steps": steps, "seconds": round(best, 3),
                            "seconds_per_mp": round(best / (h * w / 1e6), 4)})
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    print(json.dumps({
        "bench": "enhance_torch_speed", "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "photo": f"{w}x{h}", "unet_channels": list(cfg.unet.channels),
        "results": results, "peak_gpu_mb": round(peak) if peak else None,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
