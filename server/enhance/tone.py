"""Automatic tone: exposure from the photo's white point, contrast from its black point (read once denoised where
noise would hide them); the head's values where there is nothing to read.

Cameras expose for the highlights and most scenes hold something near black: 89 % of flickr8k-dev's 796 real
album photos have the 99.9th percentile of their brightest channel within 5 % of white, 97 % the 0.1th
percentile of their darkest channel within 5 % of black. An under-exposed photo keeps its blacks (light scales in linear light)
and loses its white; a faded one (contrast lost about its mean) lifts its blacks too. So the black point says
how much contrast was lost, and once that is undone the white point says how far to brighten. Measured on those
photos and on enhance-dev's city and scenery (neither trained on), both beat the head's estimates in every
noise-free case but over-exposure (README, "Photo enhancement"). Noise lifts the highlights and hides the
blacks, so a noisy photo is read once denoised (the caller passes its denoiser: the enhancer's own UNet); without
a denoiser it keeps the head's tone, as a flat one (fog, a grey card), which has neither, always does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import Image

from clipalbum.server.enhance.color import CONTRAST_LOG_MAX, GlobalParams, correct, srgb_to_linear
from clipalbum.server.enhance.noise import estimate_sigma

WHITE_QUANTILE = 0.999  # the brightest 0.1 % of pixels may clip (lamps, the sun, speculars)
BLACK_QUANTILE = 0.001  # and the darkest 0.1 % (noise, dead pixels)
MAX_BRIGHTEN_EV = 2.5
# From this noise estimate up (8-bit levels) the view is denoised first, or the head decides: noise of sigma lifts
# the highlights by about 3 sigma.
NOISY_LEVELS = 10.0
# A photo already at white keeps the head's exposure only where the head darkens by more than this (EV): its
# smaller corrections are mostly its own error on photos that needed none (city + scenery, the one-off rule sweep).
HEAD_DARKEN_EV = 0.3
# Highlights within this many stops of the median (a grey card, fog, a blank wall) say nothing about tone: the
# head decides. About 1 % of flickr8k-dev's photos are that flat.
MIN_RANGE_STOPS = 0.25
# Tone is read from the photo reduced (averaged) to at most about this long a side: the web page's preview sees
# the same, so a preview and the saved photo get the same correction, and the averaging keeps a large photo's
# noise from lifting its highlights.
VIEW_SIDE = 1024


def tone_view(photo: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The photo averaged down by a whole factor to a long side of at most about VIEW_SIDE."""
    factor = math.ceil(max(photo.shape[:2]) / VIEW_SIDE)
    if factor <= 1:
        return photo
    return np.asarray(Image.fromarray(photo).reduce(factor))


def _corrected(view: npt.NDArray[np.uint8], correction: GlobalParams, pivot: float) -> npt.NDArray[np.float32]:
    """The view in 0..1 (sRGB) after `correction`; the identity costs nothing (the flatness check reads the view
    as it is, and the sRGB round trip of a correction that changes nothing was a third of its time)."""
    x = view.astype(np.float32) / 255
    if correction == GlobalParams():
        return x
    return correct(x, tuple(np.float32(v) for v in correction), np.float32(pivot), channel_axis=-1)


def _brightest(view: npt.NDArray[np.uint8], correction: GlobalParams, pivot: float) -> npt.NDArray[np.float32]:
    """Each pixel's brightest channel in linear light, after `correction`'s contrast and colour (not its exposure)."""
    return srgb_to_linear(_corrected(view, correction._replace(exposure_ev=0.0), pivot)).max(axis=-1)


def _to_white(white: float) -> float:
    return float(np.clip(-math.log2(max(white, 1e-6)), 0.0, MAX_BRIGHTEN_EV))


def white_point_ev(view: npt.NDArray[np.uint8], correction: GlobalParams, pivot: float) -> float:
    """EV that brings the photo, after `correction`'s contrast and colour, to white at the WHITE_QUANTILE of each
    pixel's brightest channel in linear light; 0 (never darker) to MAX_BRIGHTEN_EV."""
    return _to_white(float(np.quantile(_brightest(view, correction, pivot), WHITE_QUANTILE)))


def black_point_contrast(view: npt.NDArray[np.uint8], pivot: float) -> float:
    """The contrast correction (log of the stretch about `pivot`) that takes the photo's black point (the
    BLACK_QUANTILE of each pixel's darkest channel, sRGB) back to black: lost contrast pulls black towards the
    mean as pivot x (1 - e^-c). 0 (never flatter) to CONTRAST_LOG_MAX; 0 where black is not below the mean."""
    black = float(np.quantile(view.min(axis=-1), BLACK_QUANTILE)) / 255
    if black >= pivot - 0.5 / 255:  # not below the mean by half a level: nothing to stretch
        return 0.0
    return max(0.0, min(-math.log(1 - black / pivot), CONTRAST_LOG_MAX))  # max: no -0.0


def _capped_at_white(view: npt.NDArray[np.uint8], colour: GlobalParams, pivot: float, contrast: float) -> float:
    """`contrast`, lowered where it would stretch the highlights (the WHITE_QUANTILE of each pixel's brightest
    channel, sRGB, after `colour`) past white: 0 for a photo already at white (fading pulls the highlights down
    too, so it lost none; a misty scene simply holds no black), and a hazy one just short of white must not burn
    out."""
    coloured = _corrected(view, colour._replace(exposure_ev=0.0, contrast_log=0.0), pivot)
    white = float(np.quantile(coloured.max(axis=-1), WHITE_QUANTILE))
    if white <= pivot:
        return contrast
    return max(0.0, min(contrast, math.log((1 - pivot) / (white - pivot))))


class ToneReading(NamedTuple):
    """What the automatic tone rules read from a photo, once."""

    view: npt.NDArray[np.uint8]
    readable: bool  # False: too thin, too flat, or too noisy with no denoiser; the head's values stand


def read_tone(photo: npt.NDArray[np.uint8],
              denoise: Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.uint8]] | None = None) -> ToneReading:
    """The photo's tone view, and whether the rules can read it (not too thin or too flat). A view whose noise
    would hide its highlights and blacks is read through `denoise`; without one, it is too noisy to read."""
    view = tone_view(photo)
    if min(view.shape[:2]) < 2:  # no 2x2 block to measure noise on, and no highlights to speak of
        return ToneReading(view, False)
    if float(estimate_sigma(view.astype(np.float32) / 255, channel_axis=-1)) * 255 >= NOISY_LEVELS:
        if denoise is None:
            return ToneReading(view, False)
        view = denoise(view)
    white, median = np.quantile(_brightest(view, GlobalParams(), 0.0), (WHITE_QUANTILE, 0.5))
    return ToneReading(view, bool(white > median * 2 ** MIN_RANGE_STOPS))  # flat (or black): nothing to read


def auto_contrast(reading: ToneReading, head: GlobalParams, colour: GlobalParams, pivot: float) -> float:
    """The contrast correction `--contrast auto` applies (log of the stretch). `colour`: the colour correction
    that will be applied; `pivot`: the photo's mean (0..1)."""
    if not reading.readable:
        return head.contrast_log
    return _capped_at_white(reading.view, colour, pivot, black_point_contrast(reading.view, pivot))


def auto_exposure(reading: ToneReading, head: GlobalParams, correction: GlobalParams, pivot: float) -> float:
    """The exposure (EV) `--exposure auto` applies. `head`: the head's correction; `correction`: the colour and
    contrast that will be applied (automatic or the user's); `pivot`: the photo's mean (0..1)."""
    if not reading.readable:
        return head.exposure_ev
    ev = white_point_ev(reading.view, correction, pivot)
    if ev > 0:
        return ev
    return head.exposure_ev if head.exposure_ev < -HEAD_DARKEN_EV else 0.0
