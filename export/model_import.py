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
from clipalbum.export.import_hf import load_hf_clip
from clipalbum.export.import_openclip import PREFIX as OPEN_CLIP
from clipalbum.export.import_openclip import load_open_clip
from clipalbum.export.imported import ImportedModel, unpadded
from clipalbum.export.onnx_export import DEFAULT_PARITY_TEXTS, export_dual_encoder, with_quantization
from clipalbum.server.bundle import Manifest
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.preprocess import load_model_input
from clipalbum.server.textprep import TextTokenizer

log = logging.getLogger(__name__)

ImportQuantize = Literal["none", "text-int8", "int8"]
PARITY_FLOORS = {"fp32": 0.9999, "int8": 0.99}  # per vector, torch (fp32) against ONNX Runtime
# Parity captions: the exporter's, and some with capitals, punctuation and a contraction for the tokenizer.
CAPTIONS = [*DEFAULT_PARITY_TEXTS, "Two DOGS, one ball!", "a man's bike at 5pm", "Kids on a beach at sunset."]


def import_model(source: str, out: Path, quantize: ImportQuantize = "none", model_id: str | None = None,
                 progress: bool = True, pretrained: str | None = None) -> Manifest:
    """Imports SOURCE (a transformers CLIP folder or hub name, or 'open_clip:ARCH' with `pretrained`) into the
    bundle folder `out` (replaced atomically). Raises ParityError, with the figures, when a graph does not
    reproduce the original closely enough, and ClipalbumError for what a bundle cannot express."""
    photos = parity_photos()
    with tempfile.TemporaryDirectory(prefix="clipalbum-import-") as tmp:
        if source.startswith(OPEN_CLIP):
            loaded = load_open_clip(source, pretrained, Path(tmp), model_id)
        else:
            loaded = load_hf_clip(source, Path(tmp), model_id)
        if quantize != "none":
            loaded.model_id += f"-{quantize}"  # other vectors (int8), or other query vectors (text-int8)
        check_tokenizer(loaded)
        metrics = {"preprocess_min_cosine": preprocessing_agreement(loaded, photos)}
        log.info("clipalbum's preprocessing against the original's: min cosine %.5f", metrics["preprocess_min_cosine"])
        return export_dual_encoder(
            loaded.towers, out, model_id=loaded.model_id,
            image_spec=with_quantization(loaded.image_spec, "int8" if quantize == "int8" else "none"),
            text_spec=with_quantization(loaded.text_spec, "none" if quantize == "none" else "int8"),
            tokenizer_file=loaded.tokenizer_file, parity_images=photos, parity_texts=CAPTIONS,
            description=loaded.description, metrics=metrics, progress=progress, min_cosine=PARITY_FLOORS)


def check_tokenizer(loaded: ImportedModel) -> None:
    """The bundle's tokenizer.json gives the original tokenizer's ids (padding aside), or ClipalbumError."""
    if loaded.reference_tokens is None:
        return
    ours = TextTokenizer(loaded.tokenizer_file, loaded.text_spec)(CAPTIONS)["input_ids"]
    for caption, row, theirs in zip(CAPTIONS, ours, loaded.reference_tokens(CAPTIONS)):
        if unpadded(row.tolist()) != theirs:
            raise ClipalbumError(f"the converted tokenizer does not reproduce the original's ids for {caption!r}")


@torch.no_grad()
def preprocessing_agreement(loaded: ImportedModel, photos: list[Path]) -> float:
    """Min cosine, over real photos, between the original model's embeddings of its own pipeline's pixels
    and of clipalbum's (the resize, crop and normalisation server/preprocess.py does)."""
    theirs = torch.from_numpy(loaded.reference_pixels(photos))
    ours = torch.from_numpy(np.stack([load_model_input(p, loaded.image_spec) for p in photos]))
    a = torch.nn.functional.normalize(loaded.towers.encode_image(theirs), dim=-1)
    b = torch.nn.functional.normalize(loaded.towers.encode_image(ours), dim=-1)
    return float((a * b).sum(-1).min())
