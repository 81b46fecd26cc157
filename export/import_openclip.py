"""OpenCLIP models (open-clip-torch: an architecture name with a local weights file or a pretrained tag) -> the
towers, specs and tokenizer a bundle needs. Text towers with OpenAI's BPE (CLIP, most LAION and DataComp
models) are supported; the tokenizer is rebuilt as a tokenizer.json from open_clip's own vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clipalbum.export.import_hf import default_model_id
from clipalbum.export.imported import ImportedModel, unpadded
from clipalbum.server.bundle import ImageSpec, TextSpec
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.textprep import tokenizer_lowercases

PREFIX = "open_clip:"
RESIZE_MODES = {"shortest": "shortest_crop", "squash": "squash"}  # open_clip's resize_mode -> ImageSpec.resize


class OpenClipTowers(nn.Module):
    """encode_image / encode_text over an open_clip CLIP (its text tower takes token ids only).

    open_clip always runs all 77 positions. With a causal mask and the end token's features taken (CLIP,
    LAION, DataComp), positions after the end token cannot change the result, so the text graph here runs
    only as many positions as the longest query has: a 12-token query costs 12 positions, not 77. Other
    text towers (no causal mask: MobileCLIP) run open_clip's own forward on queries padded to 77."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model  # (export reads the embedding size from the output)
        self.variable_length = (getattr(model, "attn_mask", None) is not None
                                and getattr(model, "text_pool_type", None) == "argmax"
                                and getattr(model, "positional_embedding", None) is not None
                                and _plain_self_attention(model))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.variable_length:
            return self.model.encode_text(input_ids)
        m = self.model
        length = input_ids.shape[1]
        x = m.token_embedding(input_ids) + m.positional_embedding[:length]
        mask = m.attn_mask[:length, :length]
        for block in m.transformer.resblocks:  # ResidualAttentionBlock.forward, with the attention below
            x = x + block.ls_1(_self_attention(block.attn, block.ln_1(x), mask))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)]  # the end token (the highest id)
        return m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection


def _plain_self_attention(model: nn.Module) -> bool:
    """The text transformer is batch-first blocks of ln_1 -> nn.MultiheadAttention -> ls_1, ln_2 -> mlp -> ls_2
    (what OpenCLIP's CLIP text towers are), so _self_attention can stand in for the attention."""
    transformer = getattr(model, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if not getattr(transformer, "batch_first", False) or not blocks:
        return False
    return all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) and b.attn.batch_first
               and b.attn._qkv_same_embed_dim and b.attn.in_proj_bias is not None and not hasattr(b, "ln_1_kv")
               for b in blocks)


def _self_attention(attn: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """nn.MultiheadAttention(x, x, x, attn_mask=mask) for batch-first x, written out: the traced graph then
    keeps the token axis symbolic (the module's own code bakes the traced length into its reshapes)."""
    n, length, width = x.shape
    heads = attn.num_heads
    q, k, v = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (z.reshape(n, length, heads, width // heads).transpose(1, 2) for z in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-2, -1) / (width // heads) ** 0.5 + mask, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(n, length, width)
    return attn.out_proj(out)


def load_open_clip(source: str, pretrained: str | None, work: Path, model_id: str | None = None) -> ImportedModel:
    """SOURCE is 'open_clip:ARCH'; `pretrained` a weights file, one of open_clip's tags for ARCH (downloads
    it), or 'none' (random weights: the architecture's speed, nothing more)."""
    try:
        import open_clip
    except ImportError as exc:
        raise ClipalbumError(f"importing OpenCLIP models needs open-clip-torch ({exc}); "
                             "pip install 'clipalbum[export]'") from exc
    arch = source[len(PREFIX):]
    if arch not in open_clip.list_models():
        raise ClipalbumError(f"open_clip has no architecture {arch!r} (open_clip.list_models() lists them)")
    if not pretrained:
        raise ClipalbumError(f"{source}: say which weights with --pretrained FILE or TAG (or 'none' for random "
                             "weights); open_clip.list_pretrained() lists the tags")
    weights = None if pretrained == "none" else pretrained
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights)
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    if type(tokenizer).__name__ != "SimpleTokenizer":
        raise ClipalbumError(f"{source}: its {type(tokenizer).__name__} cannot go into a bundle yet (supported: "
                             "OpenAI's BPE, as CLIP, LAION and DataComp models use)")
    tokenizer_file = bpe_tokenizer_json(tokenizer, work)
    towers = OpenClipTowers(model)
    text_spec = TextSpec(max_length=int(tokenizer.context_length), lowercase=tokenizer_lowercases(tokenizer_file),
                         input_names=("input_ids",), pad_to_max_length=not towers.variable_length)

    def reference_tokens(captions: list[str]) -> list[list[int]]:
        return [unpadded(row.tolist()) for row in tokenizer(captions)]

    @torch.no_grad()
    def reference_text(captions: list[str]) -> np.ndarray:
        return model.encode_text(tokenizer(captions)).numpy()  # open_clip's own forward, all 77 positions

    def reference_pixels(photos: list[Path]) -> np.ndarray:
        from clipalbum.server.preprocess import decode_photo

        return torch.stack([preprocess(decode_photo(p, min_side=1 << 30).image.convert("RGB"))
                            for p in photos]).numpy()

    return ImportedModel(
        towers=towers, image_spec=open_clip_image_spec(source, model.visual.preprocess_cfg), text_spec=text_spec,
        tokenizer_file=tokenizer_file,
        model_id=model_id or default_model_id("openclip", f"{arch}-{Path(pretrained).stem}", model),
        description=f"{arch} ({pretrained}): open_clip, imported by clipalbum model import",
        reference_pixels=reference_pixels, reference_tokens=reference_tokens,
        reference_text=reference_text if towers.variable_length else None)


def open_clip_image_spec(source: str, cfg: dict) -> ImageSpec:
    size = cfg["size"]
    side = size if isinstance(size, int) else size[0]
    problems = []
    if not isinstance(size, int) and size[0] != size[1]:
        problems.append(f"a {size[0]}x{size[1]} input (bundles take square ones)")
    if cfg.get("interpolation", "bicubic") not in ("bicubic", "bilinear"):
        problems.append(f"{cfg['interpolation']} resampling (clipalbum resizes bicubic or bilinear)")
    if cfg.get("resize_mode", "shortest") not in RESIZE_MODES:
        problems.append(f"resize mode {cfg['resize_mode']!r} (clipalbum: shortest side then centre crop, or squash)")
    if problems:
        raise ClipalbumError(f"{source}: its preprocessing cannot be expressed in a bundle yet: {'; '.join(problems)}")
    return ImageSpec(size=int(side), resize=RESIZE_MODES[cfg.get("resize_mode", "shortest")],  # type: ignore[arg-type]
                     resample=cfg.get("interpolation", "bicubic"),
                     mean=tuple(float(m) for m in cfg["mean"]), std=tuple(float(s) for s in cfg["std"]))


def bpe_tokenizer_json(tokenizer: object, work: Path) -> Path:
    """open_clip's SimpleTokenizer (OpenAI's BPE) as a tokenizer.json: its vocabulary and merges written as a
    transformers CLIPTokenizer, converted to the fast form (the same ids; checked against open_clip on the
    parity captions at import)."""
    from clipalbum.training.tokenizer_source import fast_tokenizer_file

    folder = work / "open_clip_bpe"
    folder.mkdir(parents=True, exist_ok=True)
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # transformers' spelling
    vocab = {names.get(token, token): i for token, i in tokenizer.encoder.items()}
    merges = sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1])
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(pair) for pair, _ in merges) + "\n",
                                       encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "model_max_length": int(tokenizer.context_length)}), encoding="utf-8")
    try:
        return fast_tokenizer_file(str(folder), folder / "fast", local_files_only=True)
    except ValueError as exc:
        raise ClipalbumError(str(exc)) from exc
