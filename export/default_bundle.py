"""The default model bundle: the bootstrap recipe exported offline, reused when already built."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

from clipalbum.export.onnx_export import Quantization, export_dual_encoder, with_quantization
from clipalbum.server.bundle import read_manifest, verify_bundle
from clipalbum.server.errors import BundleError
from clipalbum.server.filelock import exclusive
from clipalbum.server.model_cache import DEFAULT_MODEL_ID

log = logging.getLogger(__name__)

MODEL_ID = DEFAULT_MODEL_ID  # the server finds it in the model cache by this id

# int8 per tower only where Recall@10 on flickr8k-dev drops by at most one point against fp32, measured
# with `clipalbum eval` on bundles built each way (2 cores):
# - text: int8 (per-channel) 32.21 % vs fp32 32.76 %, 4x smaller (23 vs 91 MB), ~3.5x faster per query.
# - image: fp32. int8 of the MatMul/Gemm head loses 0.6 points, saves 4.6 MB but runs ~10 % slower;
#   int8 convolutions (ConvInteger) are several times slower on CPU and drift to cosine 0.983.
IMAGE_QUANTIZATION: Quantization = "none"
TEXT_QUANTIZATION: Quantization = "int8"

# Real photos for the torch-vs-ONNX parity check; scikit-image ships them when it is installed.
PARITY_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")


def parity_photos() -> list[Path]:
    spec = importlib.util.find_spec("skimage")  # located, not imported: importing skimage is slow
    if not spec or not spec.origin:
        return []
    data = Path(spec.origin).parent / "data"
    return [data / name for name in PARITY_PHOTOS if (data / name).is_file()]


def existing_bundle_ok(out_dir: Path) -> bool:
    """True when out_dir holds an intact bundle of the current recipe."""
    try:
        manifest = read_manifest(out_dir)
        if manifest.model_id != MODEL_ID:
            log.info("bundle at %s is %s, not %s: rebuilding", out_dir, manifest.model_id, MODEL_ID)
            return False
        verify_bundle(out_dir, manifest)
    except BundleError as exc:
        log.info("bundle at %s is not usable (%s): rebuilding", out_dir, exc)
        return False
    return True


def build_default_bundle(out_dir: Path, force: bool = False, progress: bool = True,
                         image_quantize: Quantization = IMAGE_QUANTIZATION,
                         text_quantize: Quantization = TEXT_QUANTIZATION) -> Path:
    """Builds the default bundle into out_dir (offline, deterministic) unless a valid one is there."""
    from clipalbum.training.bootstrap import RECIPE_VERSION

    out_dir = Path(out_dir)
    assert MODEL_ID.endswith(f"-v{RECIPE_VERSION}"), "bump MODEL_ID with the bootstrap recipe version"
    # A second builder (server start, tests) waits, then finds the bundle built.
    with exclusive(out_dir.parent / f".{out_dir.name}.lock"):
        if not force and existing_bundle_ok(out_dir):
            log.info("default bundle %s already at %s", MODEL_ID, out_dir)
            return out_dir
        _build(out_dir, progress, image_quantize, text_quantize)
    return out_dir


def _build(out_dir: Path, progress: bool, image_quantize: Quantization, text_quantize: Quantization) -> None:
    from clipalbum.training.bootstrap import BootstrapConfig, build_bootstrap_model, image_spec, text_spec
    from clipalbum.training.pretrained import bert_uncased_tokenizer_file

    started = time.perf_counter()
    config = BootstrapConfig()
    model = build_bootstrap_model(config, progress=progress)
    photos = parity_photos()
    export_dual_encoder(
        model,
        out_dir,
        model_id=MODEL_ID,
        image_spec=with_quantization(image_spec(config), image_quantize),
        text_spec=with_quantization(text_spec(config), text_quantize),
        tokenizer_file=bert_uncased_tokenizer_file(),
        parity_images=photos or None,
        description=(
            "Offline bootstrap: EfficientNet-Lite0 (ImageNet) and all-MiniLM-L6-v2 aligned without captions "
            f"(ConSE over timm's 1000 class names and definitions, softmax T={config.temperature}, "
            f"PCA to {config.embed_dim}-d)."
        ),
        progress=progress,
    )
    log.info("built the default bundle %s in %.0f s at %s", MODEL_ID, time.perf_counter() - started, out_dir)
