"""Projection heads that map each tower's features into the shared embedding space."""

from __future__ import annotations

import torch
from torch import nn

from clipalbum.training.config import HeadCfg


class ProjectionHead(nn.Module):
    """Linear -> GELU -> Linear -> Dropout -> residual -> LayerNorm (the specified head)."""

    def __init__(self, in_dim: int, out_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.projection(features)  # (N, out_dim)
        x = self.dropout(self.fc(self.gelu(projected)))
        return self.layer_norm(x + projected)


class RMSResidualBlock(nn.Module):
    """Pre-norm residual MLP block: x + Dropout(Linear(SiLU(Linear(RMSNorm(x)))))."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.act = nn.SiLU()
        self.down = nn.Linear(2 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.down(self.act(self.up(self.norm(x)))))


class RMSProjectionHead(nn.Module):
    """The custom variant: RMSNorm on the features, a Linear projection, SiLU residual blocks, a final RMSNorm."""

    def __init__(self, in_dim: int, out_dim: int = 256, dropout: float = 0.1, blocks: int = 1) -> None:
        super().__init__()
        self.input_norm = nn.RMSNorm(in_dim)  # backbone features differ wildly in scale between towers
        self.projection = nn.Linear(in_dim, out_dim)
        self.blocks = nn.Sequential(*(RMSResidualBlock(out_dim, dropout) for _ in range(blocks)))
        self.output_norm = nn.RMSNorm(out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.output_norm(self.blocks(self.projection(self.input_norm(features))))


def build_head(cfg: HeadCfg, in_dim: int) -> nn.Module:
    if cfg.kind == "mlp":
        return ProjectionHead(in_dim, cfg.dim, cfg.dropout)
    if cfg.kind == "rms":
        return RMSProjectionHead(in_dim, cfg.dim, cfg.dropout, cfg.blocks)
    if cfg.kind == "identity":  # the towers already embed into one space (a pretrained CLIP's)
        return nn.Identity()
    raise ValueError(f"unknown head kind {cfg.kind!r}; use 'mlp', 'rms' or 'identity'")
