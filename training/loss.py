"""Contrastive loss between a batch of photo and caption embeddings (symmetric InfoNCE)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from clipalbum.training.config import LossCfg


class ContrastiveLoss(nn.Module):
    """Cross-entropy over image-text similarities in both directions, divided by a temperature.

    The i-th caption belongs to the i-th photo. With `targets = "soft"` the targets are the softmax of the
    average of the image-image and text-text similarities, which forgives near-duplicates in a batch.
    """

    def __init__(self, cfg: LossCfg) -> None:
        super().__init__()
        if cfg.temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {cfg.temperature}")
        if cfg.targets not in ("hard", "soft"):
            raise ValueError(f"unknown loss.targets {cfg.targets!r}; use 'hard' or 'soft'")
        self.normalize = cfg.normalize
        self.targets = cfg.targets
        # log(1/T), learned or fixed; a log keeps the temperature positive while it trains.
        self.log_inv_temperature = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)),
                                                requires_grad=cfg.learnable_temperature)

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.log_inv_temperature.detach()))

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        assert image_emb.shape == text_emb.shape, f"{tuple(image_emb.shape)} vs {tuple(text_emb.shape)}"
        image_emb, text_emb = image_emb.float(), text_emb.float()
        if self.normalize:
            image_emb, text_emb = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
        scale = self.log_inv_temperature.clamp(max=math.log(100.0)).exp()  # as CLIP: 1/T at most 100
        logits = scale * text_emb @ image_emb.T  # (N texts, N images)
        if self.targets == "hard":
            labels = torch.arange(logits.shape[0], device=logits.device)
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        with torch.no_grad():
            similar = (image_emb @ image_emb.T + text_emb @ text_emb.T) / 2
            soft = F.softmax(similar * scale, dim=-1)  # (N, N), rows sum to 1
        text_loss = -(soft * F.log_softmax(logits, dim=-1)).sum(-1)
        image_loss = -(soft.T * F.log_softmax(logits.T, dim=-1)).sum(-1)
        return ((text_loss + image_loss) / 2).mean()
