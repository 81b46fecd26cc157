"""`clipalbum model import`: a pretrained CLIP checkpoint -> a verified model bundle, gated on parity with the
original torch model (fp32 cosine >= 0.9999 per vector, int8 >= 0.99) on real photos and captions."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import torch

from clipalbum.export.default_bundle import parity_photos
from clipalbum.export.import_hf import load_hf_clip
from clipalbum.export.import_openclip import PREFIX as OPEN_CLIP
from clipalbum.export.import_openclip import load_open_clip
from clipalbum.export.imported import ImportedModel, unpadded
from clipalbum.export.onnx_export import (DEFAULT_PARITY_TEXTS, ParityError, check_replaceable, export_dual_encoder,
                                          lowest_cosine, swap_into_place, with_quantization)
from clipalbum.server.bundle import Manifest, write_manifest
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.evaluate import evaluate_bundle
from clipalbum.server.preprocess import load_model_input
from clipalbum.server.textprep import TextTokenizer

log = logging.getLogger(__name__)

ImportQuantize = Literal["none", "text-int8", "int8"]
PARITY_FLOORS = {"fp32": 0.9999, "int8": 0.99}  # per vector, torch (fp32) against ONNX Runtime
MAX_RECALL_LOSS = 0.01  # of text -> image Recall@10 on a dev set, quantized against fp32 (one point)
# Parity captions: the exporter's, and some with capitals, punctuation and a contraction for the tokenizer.
CAPTIONS = [*DEFAULT_PARITY_TEXTS, "Two DOGS, one ball!", "a man's bike at 5pm", "Kids on a beach at sunset."]


def import_model(source: str, out: Path, quantize: ImportQuantize = "none", model_id: str | None = None,
                 progress: bool = True, pretrained: str | None = None,
                 dev_set: tuple[Path, Path] | None = None) -> Manifest:
    """Imports SOURCE (a transformers CLIP or SigLIP folder or hub name, or 'open_clip:ARCH' with `pretrained`)
    into the bundle folder `out` (replaced atomically). Raises ParityError, with the figures, when a graph does not
    reproduce the original closely enough, and ClipalbumError for what a bundle cannot express.

    With `dev_set` (a photo folder and its captions CSV) a quantized import is also measured against the fp32
    one on it, and refused when it loses more than MAX_RECALL_LOSS of text -> image Recall@10."""
    photos = parity_photos()
    out = Path(out)
    check_replaceable(out)  # before minutes of work: a mistyped --out must not cost a folder
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside `out`: the checked bundle is renamed into place, which needs the same file system.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.import-", dir=out.parent) as tmp:
        work = Path(tmp)
        if source.startswith(OPEN_CLIP):
            loaded = load_open_clip(source, pretrained, work, model_id)
        else:
            loaded = load_hf_clip(source, work, model_id)
        check_tokenizer(loaded)
        metrics = {"preprocess_min_cosine": preprocessing_agreement(loaded, photos)}
        if loaded.reference_text is not None:
            metrics["original_text_min_cosine"] = text_agreement(loaded)
        log.info("clipalbum's preprocessing against the original's: min cosine %.5f", metrics["preprocess_min_cosine"])

        def export(quantization: ImportQuantize, target: Path, model_id: str) -> Manifest:
            return export_dual_encoder(
                loaded.towers, target, model_id=model_id,
                image_spec=with_quantization(loaded.image_spec, "int8" if quantization == "int8" else "none"),
                text_spec=with_quantization(loaded.text_spec, "none" if quantization == "none" else "int8"),
                tokenizer_file=loaded.tokenizer_file, parity_images=photos, parity_texts=CAPTIONS,
                description=loaded.description, metrics=metrics, progress=progress, min_cosine=PARITY_FLOORS)

        # Another quantization gives other vectors (int8), or other query vectors (text-int8): another id.
        quantized_id = loaded.model_id if quantize == "none" else f"{loaded.model_id}-{quantize}"
        if quantize == "none" or dev_set is None:
            return export(quantize, out, quantized_id)
        export("none", work / "fp32", loaded.model_id)
        manifest = export(quantize, work / "quantized", quantized_id)
        manifest = recall_gate(manifest, work / "fp32", work / "quantized", dev_set, quantize, progress)
        swap_into_place(work / "quantized", out)
        return manifest


def recall_gate(manifest: Manifest, fp32: Path, quantized: Path, dev_set: tuple[Path, Path],
                quantize: str, progress: bool) -> Manifest:
    """Measures both bundles on the dev set; records the figures in the quantized bundle's manifest, or raises
    ParityError when the quantized one loses more than MAX_RECALL_LOSS of Recall@10."""
    images, captions = dev_set
    full = evaluate_bundle(fp32, images, captions, progress=progress)
    small = evaluate_bundle(quantized, images, captions, progress=progress)
    loss = full.recall_at_10 - small.recall_at_10
    log.info("dev set Recall@10: fp32 %.4f, %s %.4f", full.recall_at_10, quantize, small.recall_at_10)
    if loss > MAX_RECALL_LOSS:
        raise ParityError(f"{quantize} loses {loss * 100:.2f} points of text -> image Recall@10 on the dev set "
                          f"({full.recall_at_10:.2%} fp32, {small.recall_at_10:.2%} {quantize}; at most "
                          f"{MAX_RECALL_LOSS * 100:.0f} allowed); the bundle was not written")
    manifest = msgspec.structs.replace(manifest, metrics={
        **manifest.metrics, "dev_recall_at_10_fp32": full.recall_at_10,
        f"dev_recall_at_10_{quantize.replace('-', '_')}": small.recall_at_10, "dev_photos": float(small.photos)})
    write_manifest(quantized, manifest)
    return manifest


def check_tokenizer(loaded: ImportedModel) -> None:
    """The bundle's tokenizer.json gives the original tokenizer's ids (padding aside), or ClipalbumError."""
    if loaded.reference_tokens is None:
        return
    ours = TextTokenizer(loaded.tokenizer_file, loaded.text_spec)(CAPTIONS)["input_ids"]
    pad = loaded.text_spec.pad_id
    for caption, row, theirs in zip(CAPTIONS, ours, loaded.reference_tokens(CAPTIONS)):
        if unpadded(row.tolist(), pad) != unpadded(theirs, pad):
            raise ClipalbumError(f"the converted tokenizer does not reproduce the original's ids for {caption!r}")


@torch.no_grad()
def text_agreement(loaded: ImportedModel) -> float:
    """Min cosine between the towers' text embeddings (the bundle's tokenization) and the original's own
    forward; under the fp32 gate, a ParityError. Guards towers that compute the text side another way."""
    tokens = TextTokenizer(loaded.tokenizer_file, loaded.text_spec)(CAPTIONS)
    ours = loaded.towers.encode_text(**{n: torch.from_numpy(tokens[n]) for n in loaded.text_spec.input_names})
    cosine = lowest_cosine(ours.numpy(), loaded.reference_text(CAPTIONS))
    if cosine < PARITY_FLOORS["fp32"]:
        raise ParityError(f"text tower: the exported computation differs from the original's (min cosine "
                          f"{cosine:.6f} < {PARITY_FLOORS['fp32']}); the bundle was not written")
    return cosine


@torch.no_grad()
def preprocessing_agreement(loaded: ImportedModel, photos: list[Path]) -> float:
    """Min cosine, over real photos, between the original model's embeddings of its own pipeline's pixels
    and of clipalbum's (the resize, crop and normalisation server/preprocess.py does)."""
    ours = np.stack([load_model_input(p, loaded.image_spec) for p in photos])
    theirs = loaded.reference_pixels(photos)
    return lowest_cosine(loaded.towers.encode_image(torch.from_numpy(ours)).numpy(),
                      loaded.towers.encode_image(torch.from_numpy(theirs)).numpy())
