"""Turns a training checkpoint (safetensors weights + its config) into a model bundle the server loads."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import msgspec

from clipalbum.server.bundle import Manifest, TextSpec, file_sha256
from clipalbum.training.config import Config
from clipalbum.training.model import image_spec, text_spec
from clipalbum.training.trainer import TOKENIZER, WEIGHTS, checkpoint_dir, load_checkpoint, served_specs

log = logging.getLogger(__name__)


def served_text_spec(cfg: Config, tokenizer: Path, meta: dict) -> TextSpec:
    """The query tokenization the model was trained with: a checkpoint records its lower-casing; one written
    before it did was trained on lower-cased captions whatever its tokenizer."""
    spec = text_spec(cfg, tokenizer)
    return msgspec.structs.replace(spec, lowercase=bool(meta.get("text_lowercase", True)))


def checkpoint_model_id(name: str, weights: Path, quantize: str) -> str:
    """Changes whenever the vectors would: the config name, a digest of the weights, the quantization."""
    return f"{name}-{file_sha256(weights)[:12]}" + ("" if quantize == "none" else f"-{quantize}")


Quantize = Literal["none", "int8", "text-int8"]


def export_checkpoint(checkpoint: Path, bundle_dir: Path, quantize: Quantize = "none",
                      parity_images: list[Path] | None = None, progress: bool = False) -> Manifest:
    """Rebuilds the trained model offline from `checkpoint` (a run directory, or its best/ or last/) and
    exports it with export.onnx_export; the validation recalls it reached go into the manifest's metrics.

    quantize: "int8" both towers, "text-int8" the text tower only (depthwise-convolution image towers such
    as EfficientNet-Lite0 can lose too much to dynamic int8; the exporter's parity check refuses those).
    """
    from clipalbum.export.onnx_export import export_dual_encoder, with_quantization

    if quantize not in ("none", "int8", "text-int8"):
        raise ValueError(f"unknown quantization {quantize!r}; use none, int8 or text-int8")
    model, cfg, meta = load_checkpoint(Path(checkpoint))
    folder = checkpoint_dir(Path(checkpoint))
    tokenizer = folder / TOKENIZER
    if not tokenizer.is_file():
        raise FileNotFoundError(f"{folder} has no {TOKENIZER}; it was not written by clipalbum train")
    model_id = checkpoint_model_id(cfg.name, folder / WEIGHTS, quantize)
    metrics = {f"val_{k}": float(v) for k, v in (meta.get("metrics") or {}).items()}
    towers = f"fine-tuned from {cfg.clip.source}" if cfg.clip.source else f"{cfg.image.label} + {cfg.text.kind}"
    description = (f"{cfg.name}: {towers}, {cfg.head.kind} heads, trained "
                   f"{meta.get('step', 0)} steps ({meta.get('epoch', 0)} epochs) by clipalbum train")
    # A fine-tuned pretrained CLIP is served with the original's preprocessing and tokenization.
    images, texts = served_specs(meta) or (image_spec(cfg), served_text_spec(cfg, tokenizer, meta))
    log.info("exporting %s (%s) to %s", folder, model_id, bundle_dir)
    return export_dual_encoder(
        model, Path(bundle_dir), model_id=model_id, tokenizer_file=tokenizer,
        image_spec=with_quantization(images, "int8" if quantize == "int8" else "none"),
        text_spec=with_quantization(texts, "none" if quantize == "none" else "int8"),
        parity_images=parity_images, description=description, metrics=metrics, progress=progress,
    )
