"""The whole enhancer in torch, the reference that export's parity check and the CUDA/MPS path follow."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from clipalbum.server.enhance.color import correct
from clipalbum.server.enhance.noise import estimate_sigma, noise_map
from clipalbum.training.enhance.model import EnhanceUNet, GlobalHead, restore
from clipalbum.training.enhance.trainer import params_tuple, thumbnail


@torch.no_grad()
def enhance_tensor(unet: EnhanceUNet, head: GlobalHead, photo: torch.Tensor, embedding: torch.Tensor,
                   prompt: torch.Tensor | None = None, steps: int = 1, seed: int = 0,
                   params: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """photo: (1, 3, H, W) sRGB 0..1 (any size); returns (enhanced photo, the global correction used)."""
    prompt = torch.zeros_like(embedding) if prompt is None else prompt
    if params is None:
        params = head(thumbnail(photo, head.thumb), embedding, prompt)
    pivot = photo.mean(dim=(1, 2, 3), keepdim=True)
    applied = params_tuple(params)
    sigma = estimate_sigma(photo, channel_axis=-3)[:, None, None, None]
    m = unet.multiple
    h, w = photo.shape[-2:]
    pad = (0, (-w) % m, 0, (-h) % m)
    padded = F.pad(photo, pad, mode="replicate")
    corrected = correct(padded, applied, pivot, 1)
    nmap = noise_map(padded, applied, pivot, sigma, 1)
    out = restore(unet, corrected, nmap, embedding, steps=steps,
                  generator=torch.Generator(device=photo.device).manual_seed(seed))
    return out[..., :h, :w], params
