"""`clipalbum model import`: a pretrained CLIP checkpoint -> a verified model bundle, gated on parity with the
original torch model (fp32 cosine >= 0.9999 per vector, int8 >= 0.99) on real photos and captions."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from clipalbum.export.default_bundle import parity_photos
from clipalbum.export.import_hf import load_hf_clip, processor_pixels
from clipalbum.export.onnx_export import export_dual_encoder, with_quantization
from clipalbum.server.bundle import Manifest
from clipalbum.server.preprocess import load_model_input

log = logging.getLogger(__name__)

ImportQuantize = Literal["none", "text-int8", "int8"]
PARITY_FLOORS = {"fp32": 0.9999, "int8": 0.99}  # per vector, torch (fp32) against ONNX Runtime


def import_model(source: str, out: Path, quantize: ImportQuantize = "none", model_id: str | None = None,
                 progress: bool = True) -> Manifest:
    """Imports SOURCE into the bundle folder `out` (replaced atomically); raises ParityError, with the
    figures, when a graph does not reproduce the original closely enough, and ClipalbumError for a checkpoint
    a bundle cannot express."""
    photos = parity_photos()
    with tempfile.TemporaryDirectory(prefix="clipalbum-import-") as tmp:
        loaded = load_hf_clip(source, Path(tmp), model_id)
        if quantize != "none":
            loaded.model_id += f"-{quantize}"  # other vectors (int8), or other query vectors (text-int8)
        metrics = {"preprocess_min_cosine": preprocessing_agreement(loaded, photos)}
        log.info("clipalbum's preprocessing against the checkpoint's processor: min cosine %.5f",
                 metrics["preprocess_min_cosine"])
        return export_dual_encoder(
            loaded.towers, out, model_id=loaded.model_id,
            image_spec=with_quantization(loaded.image_spec, "int8" if quantize == "int8" else "none"),
            text_spec=with_quantization(loaded.text_spec, "none" if quantize == "none" else "int8"),
            tokenizer_file=loaded.tokenizer_file, parity_images=photos, description=loaded.description,
            metrics=metrics, progress=progress, min_cosine=PARITY_FLOORS)


@torch.no_grad()
def preprocessing_agreement(loaded, photos: list[Path]) -> float:
    """Min cosine, over real photos, between the original model's embeddings of its own processor's pixels
    and of clipalbum's (the same resize, crop and normalisation, done by server/preprocess.py)."""
    theirs = torch.from_numpy(processor_pixels(loaded.source, loaded.is_local, photos, loaded.image_spec.size))
    ours = torch.from_numpy(np.stack([load_model_input(p, loaded.image_spec) for p in photos]))
    a = torch.nn.functional.normalize(loaded.towers.encode_image(theirs), dim=-1)
    b = torch.nn.functional.normalize(loaded.towers.encode_image(ours), dim=-1)
    return float((a * b).sum(-1).min())
