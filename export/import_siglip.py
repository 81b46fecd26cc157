"""Hugging Face SigLIP checkpoints (transformers `SiglipModel`) -> the towers, specs and tokenizer a bundle
needs. SigLIP's preprocessing differs from CLIP's in ways the bundle records: the photo is squashed to the
model's square input (no crop), and the text is lower-cased, stripped of punctuation, tokenized by a
SentencePiece model, ended with </s> and padded with </s> to exactly 64 tokens, with no attention mask (the
text tower reads the last position, so the padding is part of what it was trained on)."""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from clipalbum.export.import_hf import default_model_id, processor_image_spec, processor_pixels
from clipalbum.export.imported import ImportedModel
from clipalbum.server.bundle import ImageSpec, TextSpec
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.textprep import tokenizer_lowercases


class SiglipTowers(nn.Module):
    """encode_image / encode_text over a transformers SiglipModel (its text tower takes token ids only)."""

    def __init__(self, siglip: nn.Module) -> None:
        super().__init__()
        self.siglip = siglip

    @staticmethod
    def _features(output: torch.Tensor | object) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._features(self.siglip.get_image_features(pixel_values=pixels))

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._features(self.siglip.get_text_features(input_ids=input_ids))


def load_siglip(source: str, where: str, is_local: bool, config: object, work: Path,
                model_id: str | None) -> ImportedModel:
    """A SiglipModel checkpoint (its config already read) as an ImportedModel."""
    from transformers import AutoImageProcessor, SiglipModel

    text, vision = config.text_config, config.vision_config
    embed_dim = int(getattr(text, "projection_size", None) or text.hidden_size)
    if int(vision.hidden_size) != embed_dim:
        raise ClipalbumError(f"{source}: image embeddings have {vision.hidden_size} dimensions and text ones "
                             f"{embed_dim}; a bundle needs one space")
    siglip = SiglipModel.from_pretrained(where, local_files_only=is_local).eval()
    try:
        processor = AutoImageProcessor.from_pretrained(where, local_files_only=is_local)
    except OSError:  # no preprocessor_config.json: SigLIP's defaults at the model's size
        from transformers import SiglipImageProcessor

        side = int(vision.image_size)
        processor = SiglipImageProcessor(size={"height": side, "width": side})
    tokenizer_file, original = siglip_tokenizer(where, is_local, work)
    pad_id = original.pad_token_id if original.pad_token_id is not None else text.pad_token_id
    text_spec = TextSpec(max_length=int(text.max_position_embeddings), lowercase=siglip_lowercases(tokenizer_file, original),
                         input_names=("input_ids",), pad_to_max_length=True, pad_id=int(pad_id))
    lower = str.lower if text_spec.lowercase else str
    return ImportedModel(
        towers=SiglipTowers(siglip), image_spec=processor_image_spec(where, processor, int(vision.image_size)),
        text_spec=text_spec,
        tokenizer_file=tokenizer_file, model_id=model_id or default_model_id("hf", source, siglip),
        description=f"{source}: transformers SiglipModel, imported by clipalbum model import",
        reference_pixels=lambda photos: processor_pixels(processor, photos),
        reference_tokens=lambda captions: [original(lower(c), truncation=True, max_length=text_spec.max_length)["input_ids"]
                                           for c in captions])


def siglip_lowercases(tokenizer_file: Path, original: object) -> bool:
    """Whether the model reads lower-cased text. SigLIP 2 checkpoints ship Gemma's cased tokenizer (their
    tokenizer_config names GemmaTokenizer), yet the models were trained on lower-cased text (SigLIP 2 paper,
    section 2.1; transformers' Siglip2Tokenizer adds the step): a Gemma tokenizer beside a SiglipModel means
    SigLIP 2."""
    return tokenizer_lowercases(tokenizer_file) or type(original).__name__.startswith("Gemma")


def siglip_tokenizer(where: str, is_local: bool, work: Path) -> tuple[Path, Callable]:
    """The checkpoint's tokenizer as a tokenizer.json (its own, or converted from its SentencePiece model with
    SigLIP's text rules), and the original tokenizer to check the conversion against."""
    from transformers import AutoTokenizer

    try:
        original = AutoTokenizer.from_pretrained(where, local_files_only=is_local)
    except (OSError, ValueError, TypeError, KeyError, ImportError) as exc:
        raise ClipalbumError(f"{where}: no tokenizer found (tokenizer.json, or SigLIP's spiece.model, which needs "
                             f"the sentencepiece package: pip install 'clipalbum[export]') ({exc})") from exc
    target = work / "tokenizer.json"
    if getattr(original, "is_fast", False):
        original.backend_tokenizer.save(str(target))
    elif getattr(original, "vocab_file", None) and hasattr(original, "canonicalize_text"):
        spm_to_siglip_tokenizer(Path(original.vocab_file), lowercase=bool(original.do_lower_case),
                                eos=str(original.eos_token)).save(str(target))
    else:
        raise ClipalbumError(f"{where}: its {type(original).__name__} cannot go into a bundle (supported: a "
                             "tokenizer.json, or SigLIP's SentencePiece model)")
    return target, original


def spm_to_siglip_tokenizer(spm_file: Path, lowercase: bool, eos: str) -> object:
    """SigLIP's SentencePiece model as a `tokenizers.Tokenizer` that gives SiglipTokenizer's ids: its text
    canonicalisation (lower-case, punctuation removed, runs of whitespace made one space, stripped), then
    the SentencePiece model's own normalisation and segmentation (transformers' converter), then </s>."""
    from tokenizers import Regex, normalizers, processors
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(spm_file.read_bytes())
    tokenizer = SpmConverter.build_tokenizer_from_spm_proto(proto, [(p.piece, p.score) for p in proto.pieces])
    if tokenizer is None:
        raise ClipalbumError(f"{spm_file}: a SentencePiece model of a kind that cannot be converted")
    canonical = [normalizers.Lowercase()] if lowercase else []
    canonical += [normalizers.Replace(Regex("[" + re.escape(string.punctuation) + "]"), ""),
                  normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    tokenizer.normalizer = normalizers.Sequence([*canonical, tokenizer.normalizer])
    eos_id = tokenizer.token_to_id(eos)
    if eos_id is None:
        raise ClipalbumError(f"{spm_file}: its end token {eos!r} is not in the vocabulary")
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, eos_id)])
    return tokenizer
