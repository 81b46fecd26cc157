"""Hugging Face CLIP checkpoints (transformers `CLIPModel`) -> a model bundle, with the model's own
preprocessing and tokenizer recorded so that serving, eval and training see what the original saw."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from clipalbum.export.imported import ImportedModel
from clipalbum.server.bundle import ImageSpec, TextSpec
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.textprep import tokenizer_lowercases

log = logging.getLogger(__name__)

RESAMPLING = {3: "bicubic", 2: "bilinear"}  # PIL's filter numbers -> the ImageSpec.resample clipalbum has


class HfClipTowers(nn.Module):
    """encode_image / encode_text over a transformers CLIPModel (what export_dual_encoder takes)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.embed_dim = int(clip.config.projection_dim)

    @staticmethod
    def _features(output: torch.Tensor | object) -> torch.Tensor:
        # transformers 5 returns a model output whose pooler_output holds the projected features.
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._features(self.clip.get_image_features(pixel_values=pixels))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._features(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def load_hf_clip(source: str, work: Path, model_id: str | None = None) -> ImportedModel:
    """Loads SOURCE (a local transformers folder, or a hub name where there is a network), a CLIPModel or a
    SiglipModel, and reads the preprocessing and tokenizer that go with it. Raises ClipalbumError for what a
    bundle cannot express."""
    from transformers import AutoConfig, CLIPModel

    local = Path(source).expanduser()
    is_local = local.is_dir()
    where = str(local) if is_local else source
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=is_local)
    except (OSError, ValueError) as exc:
        raise ClipalbumError(f"{source}: not a transformers checkpoint folder or hub name ({exc})") from exc
    if config.model_type == "siglip":
        from clipalbum.export.import_siglip import load_siglip

        return load_siglip(source, where, is_local, config, work, model_id)
    if config.model_type != "clip":
        raise ClipalbumError(f"{source} is a {config.model_type!r} model; clipalbum model import takes CLIP and "
                             "SigLIP (transformers CLIPModel, SiglipModel) checkpoints")
    clip = CLIPModel.from_pretrained(where, local_files_only=is_local).eval()
    image_size = int(config.vision_config.image_size)
    processor = clip_image_processor(where, is_local, image_size)
    tokenizer = local / "tokenizer.json" if is_local and (local / "tokenizer.json").is_file() else None
    if tokenizer is None:
        from clipalbum.training.tokenizer_source import fast_tokenizer_file

        try:
            tokenizer = fast_tokenizer_file(where, work, local_files_only=is_local)
        except ValueError as exc:
            raise ClipalbumError(str(exc)) from exc
    vocabulary = Tokenizer.from_file(str(tokenizer)).get_vocab_size()
    if vocabulary > int(config.text_config.vocab_size):
        raise ClipalbumError(f"{tokenizer} has {vocabulary} tokens but the text model only "
                             f"{config.text_config.vocab_size}: it is not this model's tokenizer")
    text_spec = TextSpec(max_length=int(config.text_config.max_position_embeddings),
                         lowercase=tokenizer_lowercases(tokenizer), input_names=("input_ids", "attention_mask"))
    return ImportedModel(
        towers=HfClipTowers(clip), image_spec=processor_image_spec(where, processor, image_size),
        text_spec=text_spec, tokenizer_file=tokenizer, model_id=model_id or default_model_id("hf", source, clip),
        description=f"{source}: transformers CLIPModel, imported by clipalbum model import",
        reference_pixels=lambda photos: processor_pixels(processor, photos))


def clip_image_processor(where: str, is_local: bool, image_size: int) -> object:
    """The checkpoint's CLIPImageProcessor (its defaults where the checkpoint has no preprocessor_config.json:
    OpenAI's mean and std, shortest side to the model's size, centre crop)."""
    from transformers import CLIPImageProcessor

    if not is_local or (Path(where) / "preprocessor_config.json").is_file():
        return CLIPImageProcessor.from_pretrained(where, local_files_only=is_local)
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def processor_image_spec(where: str, processor: object, image_size: int) -> ImageSpec:
    """A transformers image processor's pipeline as an ImageSpec: shortest side then centre crop (CLIP), or a
    squash to the square input (SigLIP); or a ClipalbumError saying what does not fit."""
    crops = bool(getattr(processor, "do_center_crop", False))
    if crops:
        side = _entry(processor.size, "shortest_edge")
        crop = (_entry(processor.crop_size, "height"), _entry(processor.crop_size, "width"))
        fits = side == crop[0] == crop[1]
        pipeline = f"shortest side to {side} px then a {crop[0]}x{crop[1]} crop"
    else:
        side, width = _entry(processor.size, "height"), _entry(processor.size, "width")
        fits = side is not None and side == width
        pipeline = f"a resize to {side}x{width} px" if side is not None else f"a resize to {processor.size}"
    problems = []
    if not (processor.do_resize and fits):
        problems.append(f"{pipeline} (clipalbum resizes the shortest side to the crop size, or squashes the "
                        "photo to a square)")
    resample = RESAMPLING.get(int(processor.resample))
    if resample is None:
        problems.append(f"resampling {processor.resample} (clipalbum resizes bicubic or bilinear)")
    if not (processor.do_rescale and abs(float(processor.rescale_factor) - 1 / 255) < 1e-9 and processor.do_normalize):
        problems.append("pixels not scaled to 0..1 and normalised")
    if problems:
        raise ClipalbumError(f"{where}: its preprocessing cannot be expressed in a bundle yet: {'; '.join(problems)}")
    if side != image_size:
        raise ClipalbumError(f"{where}: the processor makes {side} px inputs but the vision model takes {image_size}")
    return ImageSpec(size=int(side), resize="shortest_crop" if crops else "squash", resample=resample,
                     mean=tuple(float(m) for m in processor.image_mean),
                     std=tuple(float(s) for s in processor.image_std))


def _entry(sizes: object, key: str) -> int | None:
    """One entry of a processor's size settings: a dict in transformers 4, a SizeDict in 5."""
    value = sizes.get(key) if isinstance(sizes, dict) else getattr(sizes, key, None)
    return None if value is None else int(value)


def default_model_id(family: str, source: str, model: nn.Module) -> str:
    """FAMILY-NAME-DIGEST: the source's last name and a digest of the weights, so a changed checkpoint gets a
    new id (and the index re-embeds) and the same one keeps it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    name = re.sub(r"[^a-z0-9]+", "-", Path(source.rstrip("/")).name.lower()).strip("-") or "clip"
    return f"{family}-{name[:40]}-{digest.hexdigest()[:10]}"


def processor_pixels(processor: Callable, photos: list[Path]) -> np.ndarray:
    """The checkpoint's own processor's pixels for `photos` (to measure how far clipalbum's preprocessing is
    from the original's)."""
    from clipalbum.server.preprocess import decode_photo

    images = [decode_photo(p, min_side=1 << 30).image.convert("RGB") for p in photos]  # full size
    return processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)
