"""A pretrained CLIP's towers for fine-tuning (`clip.source` in a training config): loaded as `clipalbum
model import` loads them, so the fine-tuned bundle keeps the original's preprocessing and tokenizer, and
split into an image and a text tower with separate parameters (their own learning rates and freezing)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import torch
from torch import nn

from clipalbum.server.bundle import TextSpec
from clipalbum.training.config import ClipCfg

if TYPE_CHECKING:
    from clipalbum.export.imported import ImportedModel

# Top-level parts of the wrapped models that belong to the image side: transformers' CLIPModel and
# SiglipModel (vision_model, visual_projection) and open_clip's CLIP (visual). Everything else but the
# similarity's scale and bias (not used: the training loss has its own temperature) is the text side.
VISION_PARTS = ("vision_model", "visual_projection", "visual")
SIMILARITY_PARAMETERS = ("logit_scale", "logit_bias")


def load_clip_source(cfg: ClipCfg, work: Path) -> "ImportedModel":
    """The towers, specs and tokenizer of `cfg.source`, as `clipalbum model import` reads them (the tokenizer
    converted into `work` where needed)."""
    from clipalbum.export.import_hf import load_hf_clip
    from clipalbum.export.import_openclip import PREFIX as OPEN_CLIP
    from clipalbum.export.import_openclip import load_open_clip

    work.mkdir(parents=True, exist_ok=True)
    if cfg.source.startswith(OPEN_CLIP):
        return load_open_clip(cfg.source, cfg.weights or None, work, None)
    return load_hf_clip(cfg.source, work)


def training_text_spec(spec: TextSpec) -> TextSpec:
    """The tokenization training uses: the model's own, with the attention mask always computed (the
    collate and validation pass it; a tower that takes none ignores it)."""
    return msgspec.structs.replace(spec, input_names=("input_ids", "attention_mask"))


class _Parts(nn.Module):
    """One side's share of the wrapped model, registered here so that its parameters are this tower's."""

    def __init__(self, modules: dict[str, nn.Module], parameters: dict[str, nn.Parameter]) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        for name, parameter in parameters.items():
            self.register_parameter(name, parameter)


def _split(towers: nn.Module) -> tuple[nn.Module, _Parts, _Parts]:
    """(the wrapped model, its image parts, its text parts): towers (HfClipTowers, SiglipTowers,
    OpenClipTowers) wrap one model."""
    (root,) = list(towers.children())
    vision = {name: m for name, m in root.named_children() if name in VISION_PARTS}
    text = {name: m for name, m in root.named_children() if name not in VISION_PARTS}
    direct = {name: p for name, p in root.named_parameters(recurse=False) if name not in SIMILARITY_PARAMETERS}
    if not vision or not text:
        raise ValueError(f"cannot tell the image tower from the text tower in {type(root).__name__}")
    return root, _Parts(vision, {}), _Parts(text, direct)


class _ClipSide(nn.Module):
    """Shared by both towers: the forward goes through the whole wrapped model, whose parameters are
    registered by side (ClipImageTower.backbone, ClipTextTower.encoder, as ImageTower and TextTower name
    theirs for set_trainable and the optimizer's groups)."""

    def __init__(self, towers: nn.Module, root: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        object.__setattr__(self, "_towers", towers)  # not registered: the other side holds the other parameters
        object.__setattr__(self, "_root", root)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "_ClipSide":
        super()._apply(fn, *args, **kwargs)
        self._root._apply(fn, *args, **kwargs)  # buffers outside either side (open_clip's attention mask)
        return self


class ClipImageTower(_ClipSide):
    def __init__(self, towers: nn.Module, parts: _Parts, root: nn.Module, out_dim: int) -> None:
        super().__init__(towers, root, out_dim)
        self.backbone = parts

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._towers.encode_image(pixels)


class ClipTextTower(_ClipSide):
    def __init__(self, towers: nn.Module, parts: _Parts, root: nn.Module, out_dim: int, uses_mask: bool) -> None:
        super().__init__(towers, root, out_dim)
        self.encoder = parts
        self.uses_mask = uses_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.uses_mask:
            return self._towers.encode_text(input_ids=input_ids, attention_mask=attention_mask)
        return self._towers.encode_text(input_ids=input_ids)


@torch.no_grad()
def clip_towers(imported: "ImportedModel") -> tuple[ClipImageTower, ClipTextTower]:
    """The imported model's image and text towers, each with its own parameters."""
    towers = imported.towers.eval()  # the probe below must not move batch-norm statistics
    root, vision, text = _split(towers)
    spec = imported.image_spec
    out_dim = int(towers.encode_image(torch.zeros(1, 3, spec.size, spec.size)).shape[-1])
    uses_mask = "attention_mask" in imported.text_spec.input_names
    return (ClipImageTower(towers, vision, root, out_dim),
            ClipTextTower(towers, text, root, out_dim, uses_mask))
