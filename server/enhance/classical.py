"""The classical baseline the enhancer is measured against: wavelet denoising, shades-of-grey white
balance and auto-levels (scikit-image and PyWavelets, the `enhance-eval` extra)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from clipalbum.server.enhance.color import linear_to_srgb, luma, srgb_to_linear

SHADES_OF_GREY_P = 6  # Finlayson & Trezzi (2004): the Minkowski norm between grey-world (1) and max-RGB
LEVELS_PERCENTILES = (0.5, 99.5)


def wavelet_denoise(photo: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """BayesShrink per YCbCr channel, sigma estimated from the photo itself (as a user's tool would); 0..1."""
    from skimage.restoration import denoise_wavelet

    return denoise_wavelet(photo.astype(np.float64) / 255, channel_axis=-1, convert2ycbcr=True,
                           method="BayesShrink", mode="soft", rescale_sigma=True).clip(0, 1)


def to_uint8(x: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    return (x.clip(0, 1) * 255 + 0.5).astype(np.uint8)


def classical_pipeline(photo: npt.NDArray[np.uint8], denoised: npt.NDArray[np.float64] | None = None
                       ) -> npt.NDArray[np.uint8]:
    """Wavelet denoising, then shades-of-grey white balance, then auto-levels (`denoised`: the first step's
    result, when the caller has it already)."""
    x = wavelet_denoise(photo) if denoised is None else denoised
    lin = srgb_to_linear(x)
    norms = np.mean(lin ** SHADES_OF_GREY_P, axis=(0, 1)) ** (1 / SHADES_OF_GREY_P)
    x = linear_to_srgb(lin * (norms.mean() / np.maximum(norms, 1e-6)))
    low, high = np.percentile(luma(x, -1), LEVELS_PERCENTILES)
    if high - low > 1e-3:
        x = (x - low) / (high - low)
    return to_uint8(x)
