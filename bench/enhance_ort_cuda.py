"""Seconds per megapixel of the server's enhancer (ONNX Runtime) on the CUDA provider against the CPU; prints JSON.

The path `clipalbum enhance --device cuda` takes where the onnxruntime-gpu build is installed: the packaged
enhancer (or --enhancer DIR), tiled as on the CPU, on a synthetic noisy photo, without the search model's
embedding. Both devices run in this one process on the same photo; "providers" says what each session used.

    python bench/enhance_ort_cuda.py [--enhancer DIR] [--megapixels 12] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

from clipalbum.server.enhance.runtime import EnhanceOptions, Enhancer, load_enhancer


def noisy_photo(megapixels: float) -> np.ndarray:
    height = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    width = int(height * 4 / 3)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 40) * np.cos(y / 55)], axis=-1) * 200 + 20
    rng = np.random.default_rng(0)
    return (base + rng.normal(0, 15, base.shape)).clip(0, 255).astype(np.uint8)


def timed(enhancer: Enhancer, photo: np.ndarray, repeat: int) -> dict:
    unet = EnhanceOptions(denoise=1.0)  # the UNet on every tile, whatever noise the photo shows
    enhancer.enhance(photo[:512, :512], unet)  # warm-up: CUDA kernels and arenas
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        enhancer.enhance(photo, unet)
        runs.append(time.perf_counter() - start)
    megapixels = photo.shape[0] * photo.shape[1] / 1e6
    best = min(runs)
    return {"precision": enhancer.precision, "providers": enhancer.unet.get_providers(),
            "seconds": round(best, 3), "seconds_per_mp": round(best / megapixels, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enhancer", type=Path, default=REPO / "server" / "enhance" / "model")
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    import onnxruntime as ort

    photo = noisy_photo(args.megapixels)
    report = {"onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(),
              "cpus": os.cpu_count(), "machine": platform.machine(), "megapixels": round(photo.size / 3e6, 2)}
    report["cuda"] = timed(load_enhancer(args.enhancer, device="cuda"), photo, args.repeat)
    report["cpu"] = timed(Enhancer(args.enhancer), photo, args.repeat)
    report["speedup"] = round(report["cpu"]["seconds"] / report["cuda"]["seconds"], 2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
