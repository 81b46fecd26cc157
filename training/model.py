"""The dual encoder: image tower + text tower, each with a projection head into the shared space."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from clipalbum.server.bundle import ImageSpec, TextSpec
from clipalbum.server.textprep import tokenizer_lowercases
from clipalbum.training.clip_towers import clip_towers
from clipalbum.training.config import Config
from clipalbum.training.heads import build_head
from clipalbum.training.loss import ContrastiveLoss
from clipalbum.training.towers import (ImageTower, TextTower, build_image_tower, build_text_tower, set_trainable,
                             tokenizer_file)

if TYPE_CHECKING:
    from clipalbum.export.imported import ImportedModel

log = logging.getLogger(__name__)


class DualEncoder(nn.Module):
    """encode_image / encode_text return L2-normalised (N, D); forward returns the raw projections for the loss."""

    def __init__(self, image_tower: ImageTower, text_tower: TextTower, image_head: nn.Module,
                 text_head: nn.Module, loss: ContrastiveLoss, embed_dim: int) -> None:
        super().__init__()
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.image_head = image_head
        self.text_head = text_head
        self.loss = loss
        self.embed_dim = embed_dim

    def project_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_head(self.image_tower(pixels))  # (N, D)

    def project_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.text_head(self.text_tower(input_ids, attention_mask))  # (N, D)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project_image(pixels), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # No mask for towers whose bundle feeds token ids alone (SigLIP's, open_clip's).
        return F.normalize(self.project_text(input_ids, attention_mask), dim=-1)

    def forward(self, pixels: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                image_features: torch.Tensor | None = None) -> torch.Tensor:
        """The contrastive loss of a batch of matching (photo, caption) pairs.

        `image_features` (the frozen image tower's output, cached) replaces `pixels` when given.
        """
        image = self.image_head(image_features) if image_features is not None else self.project_image(pixels)
        return self.loss(image, self.project_text(input_ids, attention_mask))

    def train(self, mode: bool = True) -> "DualEncoder":
        super().train(mode)
        if mode:
            for tower in (self.image_tower, self.text_tower):
                if not any(p.requires_grad for p in tower.parameters()):
                    tower.eval()  # a frozen tower computes the same features as at serving time (no dropout)
            # Batch-norm layers whose weights are frozen keep their ImageNet running statistics.
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in module.parameters(recurse=False)):
                    module.eval()
        return self


def build_model(cfg: Config, text_hf_config: dict[str, Any] | None = None,
                clip: "ImportedModel | None" = None) -> DualEncoder:
    """Builds the model from the config. With `text_hf_config` (from a checkpoint), nothing is downloaded
    or read from pretrained weights: the caller loads the checkpoint's weights. With `clip` (the config's
    clip.source, loaded by training.clip_towers.load_clip_source) the towers are that model's."""
    if clip is not None:
        image_tower, text_tower = clip_towers(clip)
    else:
        image_cfg = cfg.image
        if text_hf_config is not None and image_cfg.kind == "timm":
            image_cfg = dataclasses.replace(image_cfg, pretrained="none")
        image_tower = build_image_tower(image_cfg)
        text_tower = build_text_tower(cfg.text, text_hf_config)
    embed_dim = cfg.head.dim
    if cfg.head.kind == "identity":
        if image_tower.out_dim != text_tower.out_dim:
            raise ValueError(f"head.kind = 'identity' needs towers that embed into one space; these give "
                             f"{image_tower.out_dim}-d and {text_tower.out_dim}-d features")
        embed_dim = image_tower.out_dim
    model = DualEncoder(
        image_tower, text_tower,
        build_head(cfg.head, image_tower.out_dim), build_head(cfg.head, text_tower.out_dim),
        ContrastiveLoss(cfg.loss), embed_dim,
    )
    if cfg.head.init == "bootstrap" and text_hf_config is None:
        start_from_bootstrap(model, cfg)
    elif cfg.head.init not in ("random", "bootstrap"):
        raise ValueError(f"unknown head.init {cfg.head.init!r}; use 'random' or 'bootstrap'")
    image_trainable = set_trainable(image_tower.backbone, cfg.image.freeze, cfg.image.trainable)
    text_trainable = set_trainable(text_tower.encoder, cfg.text.freeze, cfg.text.trainable)
    log.info("model: image %s (%d-d, %d trainable), text %s (%d-d, %d trainable), %s heads -> %d-d",
             cfg.clip.source or cfg.image.label, image_tower.out_dim, image_trainable,
             cfg.clip.source or cfg.text.kind, text_tower.out_dim, text_trainable, cfg.head.kind, embed_dim)
    return model


def param_groups(model: DualEncoder, cfg: Config) -> list[dict[str, Any]]:
    """AdamW groups with the image / text / head learning rates; frozen parameters are left out."""
    groups = [
        ("image", model.image_tower, cfg.optim.image_lr),
        ("text", model.text_tower, cfg.optim.text_lr),
        ("heads", nn.ModuleList([model.image_head, model.text_head, model.loss]), cfg.optim.head_lr),
    ]
    out = []
    for name, module, lr in groups:
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            out.append({"name": name, "params": params, "lr": lr, "weight_decay": cfg.optim.weight_decay})
    return out


def image_spec(cfg: Config) -> ImageSpec:
    """What the server must do to a photo for this model (the same preprocessing validation uses)."""
    return ImageSpec(size=cfg.image.size, resize=cfg.image.resize, mean=tuple(cfg.image.mean),  # type: ignore[arg-type]
                     std=tuple(cfg.image.std))


def text_spec(cfg: Config, tokenizer: Path | None = None) -> TextSpec:
    """What the server must do to a query for this model: lower-case it exactly when the model's own
    tokenizer does (`tokenizer`, default the config's), and cut it at text.max_length tokens."""
    lowercase = tokenizer_lowercases(tokenizer if tokenizer is not None else tokenizer_path(cfg))
    return TextSpec(max_length=cfg.text.max_length, lowercase=lowercase, input_names=("input_ids", "attention_mask"))


def tokenizer_path(cfg: Config, out_dir: Path | None = None) -> Path:
    return tokenizer_file(cfg.text, out_dir)


@torch.no_grad()
def start_from_bootstrap(model: DualEncoder, cfg: Config) -> None:
    """Initialises both mlp heads so that the untrained model embeds as the offline bootstrap does.

    The bootstrap (training/bootstrap.py) maps a photo to the mixture of its ImageNet classes' text
    embeddings, softmax(logits / T) @ class_vectors, and a caption to (sentence - centre) @ projection.
    Both are linear in what the towers output here (class probabilities; the normalised sentence), so the
    heads' first Linear takes those maps, the pooled-feature columns and the second Linear start at zero,
    and fine-tuning starts from the bootstrap's alignment instead of from random projections.
    """
    from clipalbum.training.bootstrap import BootstrapConfig, build_bootstrap_model

    needs = (cfg.head.kind == "mlp" and cfg.image.kind == "efficientnet_lite0" and cfg.image.features == "pooled+classes"
             and cfg.text.kind == "minilm" and cfg.text.pooling == "mean_l2")
    if not needs:
        raise ValueError("head.init = 'bootstrap' needs head.kind 'mlp', image.kind 'efficientnet_lite0' with "
                         "image.features 'pooled+classes', and text.kind 'minilm' with text.pooling 'mean_l2'")
    boot = build_bootstrap_model(BootstrapConfig(embed_dim=cfg.head.dim, temperature=cfg.image.class_temperature))
    pooled = model.image_tower.out_dim - boot.class_vectors.shape[0]
    image_head, text_head = model.image_head, model.text_head
    image_head.projection.weight.zero_()
    image_head.projection.weight[:, pooled:] = boot.class_vectors.T  # (D, classes)
    image_head.projection.bias.zero_()
    text_head.projection.weight.copy_(boot.projection.T)  # (D, 384)
    text_head.projection.bias.copy_(-(boot.text_center @ boot.projection))
    for head in (image_head, text_head):
        head.fc.weight.zero_()
        head.fc.bias.zero_()
    log.info("heads start from the offline bootstrap's alignment (T=%.2f)", cfg.image.class_temperature)
