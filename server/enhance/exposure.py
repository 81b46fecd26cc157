"""Automatic exposure: bring the photo's brightest pixels to white, where noise does not hide them.

Cameras expose so that a photo's highlights reach white: 89 % of flickr8k-dev's 796 real album photos have the
99.9th percentile of their brightest channel within 5 % of white. Measured on those photos, and on enhance-dev's
city and scenery (neither trained on), brightening a too-dark photo until its highlights reach white errs
less than the head's exposure in every noise-free case, and leaves a photo that needs nothing far closer to
itself (README, "Photo enhancement"). Noise lifts the highlights, so a noisy photo keeps the head's exposure;
the white point never darkens, so a clipped photo keeps the head's exposure where the head darkens clearly.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from clipalbum.server.enhance.color import GlobalParams, correct, srgb_to_linear

WHITE_QUANTILE = 0.999  # the brightest 0.1 % of pixels may clip (lamps, the sun, speculars)
MAX_BRIGHTEN_EV = 2.5
# The head decides above this noise estimate (8-bit levels): noise of sigma lifts the highlights by about 3 sigma.
NOISY_LEVELS = 10.0
# A photo already at white keeps the head's exposure only where the head darkens by more than this (EV): its
# smaller corrections are mostly its own error on photos that needed none (city + scenery, the one-off rule sweep).
HEAD_DARKEN_EV = 0.3
# The percentile is read from at most about this many pixels, taken on a regular grid (not averaged: averaging
# lowers small highlights).
SAMPLE_PIXELS = 1_000_000


def white_point_ev(photo: npt.NDArray[np.uint8], params: GlobalParams, pivot: float) -> float:
    """EV that brings the photo, after `params`' contrast and colour (its exposure ignored), to white at the
    WHITE_QUANTILE of each pixel's brightest channel in linear light; 0 (never darker) to MAX_BRIGHTEN_EV."""
    height, width = photo.shape[:2]
    stride = max(1, math.ceil(math.sqrt(height * width / SAMPLE_PIXELS)))
    x = photo[::stride, ::stride].astype(np.float32) / 255
    applied = tuple(np.float32(v) for v in params._replace(exposure_ev=0.0))
    brightest = srgb_to_linear(correct(x, applied, np.float32(pivot), channel_axis=-1)).max(axis=-1)
    white = float(np.quantile(brightest, WHITE_QUANTILE))
    return float(np.clip(-math.log2(max(white, 1e-6)), 0.0, MAX_BRIGHTEN_EV))


def auto_exposure(photo: npt.NDArray[np.uint8], head: GlobalParams, pivot: float, noise_levels: float) -> float:
    """The exposure (EV) `--exposure auto` applies, given the head's correction and the photo's noise estimate
    (8-bit levels)."""
    if noise_levels >= NOISY_LEVELS:
        return head.exposure_ev
    white = white_point_ev(photo, head, pivot)
    if white > 0:
        return white
    return head.exposure_ev if head.exposure_ev < -HEAD_DARKEN_EV else 0.0
