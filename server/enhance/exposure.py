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
from PIL import Image

from clipalbum.server.enhance.color import GlobalParams, correct, srgb_to_linear
from clipalbum.server.enhance.noise import estimate_sigma

WHITE_QUANTILE = 0.999  # the brightest 0.1 % of pixels may clip (lamps, the sun, speculars)
MAX_BRIGHTEN_EV = 2.5
# The head decides above this noise estimate (8-bit levels): noise of sigma lifts the highlights by about 3 sigma.
NOISY_LEVELS = 10.0
# A photo already at white keeps the head's exposure only where the head darkens by more than this (EV): its
# smaller corrections are mostly its own error on photos that needed none (city + scenery, the one-off rule sweep).
HEAD_DARKEN_EV = 0.3
# Highlights within this many stops of the median (a grey card, fog, a blank wall) say nothing about exposure:
# the head decides. About 1 % of flickr8k-dev's photos are that flat.
MIN_RANGE_STOPS = 0.25
# The white point and its noise estimate are read from the photo reduced (averaged) to at most about this long a
# side: the web page's preview sees the same, so a preview and the saved photo get the same exposure, and the
# averaging keeps a large photo's noise from lifting its highlights.
VIEW_SIDE = 1024


def exposure_view(photo: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The photo averaged down by a whole factor to a long side of at most about VIEW_SIDE."""
    factor = math.ceil(max(photo.shape[:2]) / VIEW_SIDE)
    if factor <= 1:
        return photo
    return np.asarray(Image.fromarray(photo).reduce(factor))


def _brightest(view: npt.NDArray[np.uint8], correction: GlobalParams, pivot: float) -> npt.NDArray[np.float32]:
    """Each pixel's brightest channel in linear light, after `correction`'s contrast and colour (not its exposure)."""
    applied = tuple(np.float32(v) for v in correction._replace(exposure_ev=0.0))
    corrected = correct(view.astype(np.float32) / 255, applied, np.float32(pivot), channel_axis=-1)
    return srgb_to_linear(corrected).max(axis=-1)


def _to_white(white: float) -> float:
    return float(np.clip(-math.log2(max(white, 1e-6)), 0.0, MAX_BRIGHTEN_EV))


def white_point_ev(view: npt.NDArray[np.uint8], correction: GlobalParams, pivot: float) -> float:
    """EV that brings the photo, after `correction`'s contrast and colour, to white at the WHITE_QUANTILE of each
    pixel's brightest channel in linear light; 0 (never darker) to MAX_BRIGHTEN_EV."""
    return _to_white(float(np.quantile(_brightest(view, correction, pivot), WHITE_QUANTILE)))


def auto_exposure(photo: npt.NDArray[np.uint8], head: GlobalParams, correction: GlobalParams, pivot: float) -> float:
    """The exposure (EV) `--exposure auto` applies. `head`: the head's correction; `correction`: the colour and
    contrast that will be applied (the head's or the user's); `pivot`: the photo's mean (0..1)."""
    view = exposure_view(photo)
    if min(view.shape[:2]) < 2:  # no 2x2 block to measure noise on, and no highlights to speak of
        return head.exposure_ev
    if float(estimate_sigma(view.astype(np.float32) / 255, channel_axis=-1)) * 255 >= NOISY_LEVELS:
        return head.exposure_ev
    white, median = np.quantile(_brightest(view, correction, pivot), (WHITE_QUANTILE, 0.5))
    if white < median * 2 ** MIN_RANGE_STOPS:  # flat: no highlights to read
        return head.exposure_ev
    ev = _to_white(float(white))
    if ev > 0:
        return ev
    return head.exposure_ev if head.exposure_ev < -HEAD_DARKEN_EV else 0.0
