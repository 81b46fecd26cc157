"""Enhancer speed on the CPU: seconds per megapixel for the fp32 and int8 UNets side by side, 1024- and 1600-px
previews (read as the server's preview jobs read them, decoding included), and each run's peak resident memory
with the search model loaded too (as the server holds it); prints JSON. These run the UNet on every tile (denoise
1); "clean_photo_auto_int8" is the same photo without noise, enhanced with --denoise auto, which skips the UNet
on it. Each measurement runs in a fresh child process so its peak memory is its own.

    .venv/bin/python bench/enhance_speed.py [--enhancer DIR] [--model BUNDLE] [--megapixels 12] [--steps 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_test_photo(megapixels: float, path: Path, sigma: float = 15.0) -> None:
    """A real photo (scikit-image's astronaut) enlarged to the size asked for, with Gaussian noise of `sigma`
    (8-bit levels), saved as a JPEG (made here, so that its making does not count towards the measured
    process's memory)."""
    import numpy as np
    from PIL import Image

    from clipalbum.server.demo import skimage_data_dir

    height = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    width = int(height * 4 / 3)
    base = Image.open(skimage_data_dir() / "astronaut.png").convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(0)
    noisy = np.asarray(base, dtype=np.float32) + rng.normal(0, sigma, (height, width, 3)).astype(np.float32)
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=95)


def child(args: argparse.Namespace) -> None:
    from clipalbum.server.encoders import load_encoders
    from clipalbum.server.enhance.conditioning import Conditioner
    from clipalbum.server.enhance.photoio import read_photo, read_preview
    from clipalbum.server.enhance.runtime import EnhanceOptions, Enhancer

    encoders = load_encoders(Path(args.model))
    enhancer = Enhancer(Path(args.enhancer), precision=args.precision)
    conditioner = Conditioner(encoders, enhancer.manifest.conditioning_model_id)
    if not args.preview:
        photo = read_photo(Path(args.photo)).pixels
    start = time.perf_counter()
    if args.preview:  # as the server's preview jobs read it (a reduced JPEG decode), decoding included
        photo = read_preview(Path(args.photo), args.preview).pixels
    # denoise 1: the UNet runs on every tile (auto skips it on a photo it finds clean, as a small preview can be)
    denoise = None if args.denoise == "auto" else 1.0
    enhancer.enhance(photo, EnhanceOptions(denoise=denoise, steps=args.steps), embedding=conditioner.image(photo))
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": round(seconds, 2), "pixels": photo.shape[0] * photo.shape[1],
                      "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, it starts afresh at exec, so the parent's
    peak does not leak into the child's figure)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run(args: argparse.Namespace, precision: str, preview: int = 0, photo: str | None = None,
        denoise: str = "1") -> dict:
    command = [sys.executable, __file__, "--child", "--photo", photo or args.photo, "--enhancer", args.enhancer,
               "--model", args.model, "--megapixels", str(args.megapixels), "--steps", str(args.steps),
               "--precision", precision, "--preview", str(preview), "--denoise", denoise]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    megapixels = result["pixels"] / 1e6
    return {"precision": precision, "megapixels": round(megapixels, 2), "seconds": result["seconds"],
            "seconds_per_mp": round(result["seconds"] / megapixels, 3), "peak_rss_mb": result["peak_rss_mb"]}


def main() -> int:
    from serving import load_average, resolve_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enhancer", default=str(REPO / "server" / "enhance" / "model"))
    parser.add_argument("--model")
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--preview", type=int, default=0)
    parser.add_argument("--denoise", default="1", choices=["1", "auto"], help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--photo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = str(resolve_model(args.model))
    if args.child:
        child(args)
        return 0
    load = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        args.photo = str(Path(tmp) / "photo.jpg")
        write_test_photo(args.megapixels, Path(args.photo))
        from clipalbum.server.enhance.manifest import read_enhancer_manifest

        # The packaged enhancer keeps only int8: an export with both (`clipalbum enhance export RUN DIR`) compares.
        has_fp32 = "fp32" in read_enhancer_manifest(Path(args.enhancer), verify=False).unet
        int8, fp32 = run(args, "int8"), (run(args, "fp32") if has_fp32 else None)
        previews = {f"preview_{side}px_int8": run(args, "int8", preview=side) for side in (1024, 1600)}
        clean = str(Path(tmp) / "clean.jpg")
        write_test_photo(args.megapixels, Path(clean), sigma=0.0)
        clean_auto = run(args, "int8", photo=clean, denoise="auto")
    print(json.dumps({
        "bench": "enhance_speed", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_average_at_start": load, "steps": args.steps, "int8": int8, "fp32": fp32,
        "int8_speedup": round(fp32["seconds"] / int8["seconds"], 2) if fp32 else None,
        **previews, "clean_photo_auto_int8": clean_auto, "enhancer": args.enhancer,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
