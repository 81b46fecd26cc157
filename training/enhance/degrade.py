"""Synthetic degradations for training, batched on the training device.

What goes wrong in a home album: a wrong exposure (in linear light, highlights clipped), a colour cast,
lost contrast, sensor noise that grows with the signal, JPEG. Each photo of a batch draws its own. The
global part is server.enhance.color's, so the correction a head predicts undoes it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from clipalbum.server.enhance.color import degrade_global


@dataclass
class DegradeCfg:
    exposure_p: float = 0.6
    exposure_ev: tuple[float, float] = (-1.0, 2.2)  # correction in stops: +1 undoes a photo 1 EV too dark
    cast_p: float = 0.6
    cast_log_gain: float = 0.35  # red/blue gains up to e^0.35 = 1.42x either way
    contrast_p: float = 0.3
    contrast_log: float = 0.5  # contrast lost, as the log of the stretch that restores it
    noise_p: float = 0.85
    noise_sigma: tuple[float, float] = (0.0, 55.0 / 255)  # Gaussian part, 0..1 units
    shot_p: float = 0.5
    shot_variance: float = 0.01  # signal-dependent part: variance = shot * intensity
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (35, 95)


@dataclass
class Degraded:
    photo: torch.Tensor  # (B, 3, H, W), 0..1, quantised to 8 bits like a file
    noise_free: torch.Tensor  # the same global degradation without noise or JPEG
    params: torch.Tensor  # (B, 4): the correction that undoes the global part (PARAM_NAMES)
    pivot: torch.Tensor  # (B, 1, 1, 1): the degraded photo's mean, the contrast pivot


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=device)


def _gate(n: int, p: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=gen, device=device) < p).float()


def sample_params(n: int, cfg: DegradeCfg, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n, 4) corrections that the degradation will need: exposure, red and blue log gains, contrast."""
    ev = _uniform(n, *cfg.exposure_ev, gen, device) * _gate(n, cfg.exposure_p, gen, device)
    # Casts mostly move red and blue apart (warm/cool light), sometimes independently (tints).
    red = _uniform(n, -cfg.cast_log_gain, cfg.cast_log_gain, gen, device)
    opposed = -red * _uniform(n, 0.5, 1.5, gen, device)
    independent = _uniform(n, -cfg.cast_log_gain, cfg.cast_log_gain, gen, device)
    pick = _gate(n, 0.7, gen, device)
    blue = pick * opposed + (1 - pick) * independent
    cast = _gate(n, cfg.cast_p, gen, device)
    contrast = _uniform(n, 0.0, cfg.contrast_log, gen, device) * _gate(n, cfg.contrast_p, gen, device)
    return torch.stack([ev, red * cast, blue * cast, contrast], dim=1)


def degrade(clean: torch.Tensor, cfg: DegradeCfg, gen: torch.Generator, params: torch.Tensor | None = None) -> Degraded:
    n, device = clean.shape[0], clean.device
    params = sample_params(n, cfg, gen, device) if params is None else params
    col = params[:, :, None, None, None]  # (B, 4, 1, 1, 1): each broadcasts over (B, C, H, W)
    # The pivot is the mean after the colour/exposure change, before contrast (which keeps the mean).
    exposed = degrade_global(clean, (col[:, 0], col[:, 1], col[:, 2], torch.zeros_like(col[:, 3])), 0.0, channel_axis=1)
    pivot = exposed.mean(dim=(1, 2, 3), keepdim=True)
    noise_free = degrade_global(exposed, (torch.zeros_like(col[:, 0]),) * 3 + (col[:, 3],), pivot, channel_axis=1)
    photo = add_noise(noise_free, cfg, gen)
    photo = jpeg(photo, cfg, gen)
    return Degraded(photo=quantize(photo), noise_free=noise_free, params=params, pivot=pivot)


def add_noise(x: torch.Tensor, cfg: DegradeCfg, gen: torch.Generator) -> torch.Tensor:
    n, device = x.shape[0], x.device
    on = _gate(n, cfg.noise_p, gen, device)
    # Low levels are as common as high ones in albums: sigma drawn uniformly, squared for variance.
    sigma = _uniform(n, *cfg.noise_sigma, gen, device) * on
    shot = _uniform(n, 0.0, cfg.shot_variance, gen, device) * _gate(n, cfg.shot_p, gen, device) * on
    variance = sigma[:, None, None, None] ** 2 + shot[:, None, None, None] * x
    noise = torch.randn(x.shape, generator=gen, device=device)
    return x + noise * variance.sqrt()


def quantize(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


# --- JPEG: YCbCr, 4:2:0 chroma, 8x8 DCT, the standard tables scaled by quality (libjpeg's rule) ---------

_LUMA_TABLE = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
               14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
               49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA_TABLE = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
                 47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32


def _dct_matrix(device: torch.device) -> torch.Tensor:
    k = torch.arange(8, device=device, dtype=torch.float32)
    m = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m  # orthonormal: coefficients = M @ block @ M.T


def _tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.where(quality < 50, 5000 / quality, 200 - 2 * quality)[:, None, None]  # (B, 1, 1)
    base_l = torch.tensor(_LUMA_TABLE, device=quality.device, dtype=torch.float32).view(1, 8, 8)
    base_c = torch.tensor(_CHROMA_TABLE, device=quality.device, dtype=torch.float32).view(1, 8, 8)
    return ((base_l * scale + 50) // 100).clamp(1, 255), ((base_c * scale + 50) // 100).clamp(1, 255)


def _blockwise(plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """plane: (B, H, W) in 0..255 with sides divisible by 8; table: (B, 8, 8)."""
    b, h, w = plane.shape
    blocks = (plane - 128).reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)  # (B, h, w, 8, 8)
    coeffs = dct @ blocks @ dct.T
    t = table[:, None, None]
    coeffs = torch.round(coeffs / t) * t
    out = dct.T @ coeffs @ dct
    return out.permute(0, 1, 3, 2, 4).reshape(b, h, w) + 128


def jpeg(x: torch.Tensor, cfg: DegradeCfg, gen: torch.Generator) -> torch.Tensor:
    """JPEG round trip for a random subset of the batch (sides must divide by 16)."""
    n, device = x.shape[0], x.device
    chosen = _gate(n, cfg.jpeg_p, gen, device).bool()
    if not chosen.any():
        return x
    sub = x[chosen].clamp(0, 1) * 255
    quality = _uniform(int(chosen.sum()), *map(float, cfg.jpeg_quality), gen, device).round()
    luma_t, chroma_t = _tables(quality)
    dct = _dct_matrix(device)
    r, g, b = sub[:, 0], sub[:, 1], sub[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    y = _blockwise(y, luma_t, dct)
    chroma = []
    for plane in (cb, cr):
        small = F.avg_pool2d(plane[:, None], 2)[:, 0]
        small = _blockwise(small, chroma_t, dct)
        chroma.append(F.interpolate(small[:, None], scale_factor=2, mode="bilinear", align_corners=False)[:, 0])
    cb, cr = chroma
    rgb = torch.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                       y + 1.772 * (cb - 128)], dim=1) / 255
    out = x.clone()
    out[chosen] = rgb
    return out
