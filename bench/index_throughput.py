"""Indexing throughput (photos/s): clipalbum's pipeline vs a naive one, on camera-size JPEGs and flickr8k-dev.

clipalbum: Library.index() into a fresh data directory with the default bundle (DCT-scaled JPEG decoding on a
thread pool, batched ONNX Runtime calls). Naive, in the same run on the same files: full PIL decode (no
draft), the same resize/normalise, the torch fp32 image model, one photo at a time. Prints JSON.

    python bench/index_throughput.py                      # ~1-2 minutes on 2 cores
    python bench/index_throughput.py --camera 200 --flickr 796 --naive 48 --model DIR --infer-batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import numpy as np
import onnxruntime as ort  # before usearch (see server/ann.py)
from PIL import Image, ImageOps

from clipalbum.server.bundle import ImageSpec, read_manifest
from clipalbum.server.demo import skimage_data_dir
from clipalbum.server.library import Library
from clipalbum.server.model_resolver import resolve_bundle
from clipalbum.server.preprocess import to_model_input
from clipalbum.server.settings import data_paths

FLICKR8K_DEV = REPO.parent / "shared" / "data" / "flickr8k-dev" / "images"
CAMERA_SIZE = (4000, 3000)  # 12 MP, a common phone/camera sensor


def skimage_photos() -> list[Path]:
    data = skimage_data_dir()
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
             "hubble_deep_field.jpg", "retina.jpg", "page.png"]
    return [data / n for n in names if (data / n).is_file()]


def make_camera_jpeg(source: Path, out: Path, index: int) -> Path:
    """Upscales a real photo to 12 MP and saves it like a camera would (JPEG q90, EXIF capture time)."""
    img = Image.open(source).convert("RGB")
    if index % 2:  # vary the pixels a little so every file is distinct content
        img = ImageOps.mirror(img)
    size = CAMERA_SIZE if img.width >= img.height else CAMERA_SIZE[::-1]
    img = img.resize(size, Image.Resampling.BICUBIC)
    # Sensor grain: an upscaled photo is too smooth, and real 12 MP JPEGs (3-6 MB) cost more to decode.
    grain = np.random.default_rng(index).integers(-6, 7, (size[1], size[0], 1), dtype=np.int16)
    img = Image.fromarray((np.asarray(img, dtype=np.int16) + grain).clip(0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "BenchCam", "Model 12"
    exif.get_ifd(0x8769)[0x9003] = f"2024:06:{1 + index % 28:02d} 12:{index % 60:02d}:00"
    img.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out


def camera_album(folder: Path, count: int) -> list[Path]:
    sources = skimage_photos()
    if FLICKR8K_DEV.is_dir():
        sources += sorted(FLICKR8K_DEV.glob("*.jpg"))[: max(0, count - len(sources))]
    folder.mkdir(parents=True)
    jobs = [(sources[i % len(sources)], folder / f"IMG_{i:04d}.jpg", i) for i in range(count)]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: make_camera_jpeg(*job), jobs))


def flickr_album(folder: Path, count: int) -> list[Path]:
    """Symlinks to flickr8k-dev photos (read in place, never copied)."""
    folder.mkdir(parents=True)
    files = []
    for photo in sorted(FLICKR8K_DEV.glob("*.jpg"))[:count]:
        (folder / photo.name).symlink_to(photo)
        files.append(folder / photo.name)
    return files


def clipalbum_rate(album: Path, bundle: Path, work: Path, decode_threads: int | None,
                   infer_batch: int | None) -> dict:
    data = work / f"data-{album.name}"
    # The flickr album links to photos outside it: followed only when asked.
    library = Library.open(data_paths(data), model=bundle, roots=[str(album)], follow_links_outside=True)
    library.decode_threads, library.infer_batch = decode_threads, infer_batch
    cpu = _cpu_seconds()
    try:
        summary = library.index()
        cpu = _cpu_seconds() - cpu
    finally:
        library.close()
        shutil.rmtree(data, ignore_errors=True)
    assert summary.failed == 0 and summary.embedded == summary.scanned, summary
    return {"photos": summary.embedded, "seconds": summary.seconds,
            "photos_per_s": round(summary.embedded / summary.seconds, 2),
            "cpu_ms_per_photo": round(cpu / summary.embedded * 1000, 1)}


def naive_model(kind: str):
    """The torch fp32 image model: the bootstrap recipe's dual encoder (what the default bundle exports),
    or, with --naive-model backbone, just its EfficientNet-Lite0 (same cost, no minute-long build)."""
    import torch
    from torch import nn

    if kind == "backbone":
        from clipalbum.training.pretrained import load_efficientnet_lite0

        return load_efficientnet_lite0().eval(), "training.pretrained.load_efficientnet_lite0 (torch fp32)"
    from clipalbum.training.bootstrap import build_bootstrap_model

    class ImageTower(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(pixels)

    name = "training.bootstrap.build_bootstrap_model().encode_image (torch fp32)"
    return ImageTower(build_bootstrap_model()).eval(), name


def naive_rate(files: list[Path], spec: ImageSpec, model) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    with torch.no_grad():  # warm-up outside the timing, as the ONNX sessions are made in Library.open
        model(torch.zeros(1, 3, spec.size, spec.size))
    started, cpu = time.perf_counter(), _cpu_seconds()
    with torch.no_grad():
        for path in files:
            img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")  # full decode, no draft
            pixels = torch.from_numpy(to_model_input(img, spec))[None]
            model(pixels)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    return {"photos": len(files), "seconds": round(seconds, 3), "photos_per_s": round(len(files) / seconds, 2),
            "cpu_ms_per_photo": round(cpu / len(files) * 1000, 1)}


def _cpu_seconds() -> float:
    """CPU time of this process, all threads: less sensitive than wall time to other load on the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camera", type=int, default=96, help="camera-size (12 MP) JPEGs to index")
    parser.add_argument("--flickr", type=int, default=300, help="flickr8k-dev photos to index (0: skip)")
    parser.add_argument("--naive", type=int, default=24, help="photos per set for the (slow) naive pipeline")
    parser.add_argument("--model", help="bundle directory (default: the data directory's default bundle)")
    parser.add_argument("--data-dir", help="where the default bundle lives (default: as the CLI)")
    parser.add_argument("--decode-threads", type=int, default=None)
    parser.add_argument("--infer-batch", type=int, default=None, help="photos per ONNX Runtime call")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--naive-model", choices=["bootstrap", "backbone"], default="bootstrap")
    args = parser.parse_args(argv)

    bundle = resolve_bundle(data_paths(args.data_dir), args.model)
    manifest = read_manifest(bundle)
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "onnxruntime": ort.__version__, "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "bundle": {"path": str(bundle), "model_id": manifest.model_id,
                   "image_quantization": manifest.image.quantization, "input": manifest.image.size},
        "settings": {"decode_threads": args.decode_threads or "default", "infer_batch": args.infer_batch or "default",
                     "ort_threads": os.environ.get("CLIPALBUM_THREADS", "all cores")},
        "sets": {},
    }
    model, model_name = (None, None) if args.skip_naive else naive_model(args.naive_model)
    result["naive_model"] = model_name
    with tempfile.TemporaryDirectory(prefix="clipalbum-bench-") as tmp:
        work = Path(tmp)
        sets = {}
        if args.camera:
            started = time.perf_counter()
            sets["camera_12mp_jpeg"] = camera_album(work / "camera", args.camera)
            result["camera_jpegs_made_in_s"] = round(time.perf_counter() - started, 1)
            result["camera_jpeg_mb"] = round(np.mean([p.stat().st_size for p in sets["camera_12mp_jpeg"]]) / 1e6, 2)
        if args.flickr and FLICKR8K_DEV.is_dir():
            sets["flickr8k_dev"] = flickr_album(work / "flickr", args.flickr)
        for name, files in sets.items():
            entry = {"clipalbum": clipalbum_rate(files[0].parent, bundle, work, args.decode_threads,
                                                 args.infer_batch)}
            if model is not None:
                entry["naive"] = naive_rate(files[: args.naive], manifest.image, model)
                entry["speedup"] = round(entry["clipalbum"]["photos_per_s"] / entry["naive"]["photos_per_s"], 2)
            result["sets"][name] = entry
    camera = result["sets"].get("camera_12mp_jpeg")
    if camera and "speedup" in camera:
        result["bar"] = {"camera_photos_per_s>=20": camera["clipalbum"]["photos_per_s"] >= 20,
                         "speedup>=5": camera["speedup"] >= 5}
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
