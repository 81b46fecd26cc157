"""How noisy a photo is: one number, estimated the same way in training (torch) and serving (numpy)."""

from __future__ import annotations

from typing import Any

from clipalbum.server.enhance.color import LUMA, luma

# Median absolute deviation of Gaussian noise is 0.6745 sigma (Donoho & Johnstone, 1994). Luma mixes the
# three channels' independent noise, which shrinks it by the norm of the luma weights.
_MAD_TO_SIGMA = 1.0 / 0.6745
_LUMA_NORM = sum(w * w for w in LUMA) ** 0.5


def estimate_sigma(x: Any, channel_axis: int) -> Any:
    """Noise standard deviation (0..1 units) of sRGB photos, from the finest diagonal Haar details of luma.

    x: (..., 3, H, W) with channel_axis=-3, or (..., H, W, 3) with channel_axis=-1; returns one value per
    photo (the leading axes). Texture adds to the estimate, so it reads high on busy, clean photos; the
    model sees the same estimate in training and learns what it means.
    """
    y = luma(x, channel_axis)  # keeps a length-1 channel axis
    if channel_axis == -1:
        y = y[..., 0]
    else:
        y = y[..., 0, :, :]
    h, w = (y.shape[-2] // 2) * 2, (y.shape[-1] // 2) * 2
    y = y[..., :h, :w]
    diagonal = (y[..., 0::2, 0::2] - y[..., 0::2, 1::2] - y[..., 1::2, 0::2] + y[..., 1::2, 1::2]) * 0.5
    flat = abs(diagonal).reshape(*diagonal.shape[:-2], -1)
    return _median_last(flat) * (_MAD_TO_SIGMA / _LUMA_NORM)


def _median_last(a: Any) -> Any:
    if hasattr(a, "detach"):  # torch
        return a.median(dim=-1).values
    import numpy as np

    return np.median(a, axis=-1)


def noise_map(x: Any, params: tuple[Any, Any, Any, Any], pivot: Any, sigma: Any, channel_axis: int,
              corrected: Any = None) -> Any:
    """Per-pixel noise after the global correction: the photo's sigma times the correction's local slope
    (brightening a shadow amplifies its noise), averaged over channels; one channel, on `channel_axis`.
    `corrected`: correct(x, params, pivot), where the caller has it already (it is half the work)."""
    from clipalbum.server.enhance.color import correct

    step = 1.0 / 64
    if corrected is None:
        corrected = correct(x, params, pivot, channel_axis)
    slope = (correct(x + step, params, pivot, channel_axis) - corrected) / step
    return slope.mean(axis=channel_axis, keepdims=True) * sigma
