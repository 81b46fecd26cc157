"""Colour maths shared by training (torch tensors) and serving (numpy arrays).

Each function uses only arithmetic, comparisons, `**` and `.clip`, which numpy arrays and torch tensors
spell alike, so one implementation serves both: the correction the server applies is the one the model
was trained against. Pixels are sRGB in 0..1; callers shape the per-image parameters to broadcast.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

E = math.e
# Global corrections, in the order the head predicts them (and GlobalParams lists them).
PARAM_NAMES = ("exposure_ev", "log_gain_red", "log_gain_blue", "contrast_log")
# Rec. 601 luma weights (the noise estimate and the contrast pivot use luma).
LUMA = (0.299, 0.587, 0.114)
# A contrast stretch's factor is exp(contrast_log); the --contrast slider's 1.0 doubles local contrast.
CONTRAST_LOG_MAX = math.log(2.0)


class GlobalParams(NamedTuple):
    """One photo's global correction. Gains act in linear light; contrast stretches sRGB about `pivot`."""

    exposure_ev: float = 0.0
    log_gain_red: float = 0.0
    log_gain_blue: float = 0.0
    contrast_log: float = 0.0


def srgb_to_linear(x: Any) -> Any:
    x = x.clip(0.0, 1.0)
    low = x / 12.92
    high = ((x + 0.055) / 1.055) ** 2.4
    return low + (high - low) * (x > 0.04045)


def linear_to_srgb(y: Any) -> Any:
    """Clips to 0..1 first: light pushed past white is lost, as in a camera."""
    y = y.clip(0.0, 1.0)
    low = y * 12.92
    high = 1.055 * y.clip(0.0031308, 1.0) ** (1 / 2.4) - 0.055  # clipped: a 0 ** 0.42 gradient is infinite
    return low + (high - low) * (y > 0.0031308)


def rgb_gains(ev: Any, log_red: Any, log_blue: Any) -> tuple[Any, Any, Any]:
    """Per-channel multipliers in linear light for an exposure change and red/blue gains."""
    scale = 2.0 ** ev
    return scale * E ** log_red, scale, scale * E ** log_blue


def stretch_contrast(x: Any, contrast_log: Any, pivot: Any) -> Any:
    return (pivot + (x - pivot) * E ** contrast_log).clip(0.0, 1.0)


def apply_gains(x: Any, red: Any, green: Any, blue: Any, channel_axis: int) -> Any:
    """sRGB in, sRGB out: the gains multiply linear light, then highlights clip."""
    lin = srgb_to_linear(x)
    parts = [_take(lin, c, channel_axis) * g for c, g in enumerate((red, green, blue))]
    return linear_to_srgb(_stack(parts, lin, channel_axis))


def correct(x: Any, params: tuple[Any, Any, Any, Any], pivot: Any, channel_axis: int) -> Any:
    """The global correction: contrast about `pivot` (the photo's mean), then exposure and colour gains."""
    ev, log_red, log_blue, contrast_log = params
    x = stretch_contrast(x, contrast_log, pivot)
    return apply_gains(x, *rgb_gains(ev, log_red, log_blue), channel_axis=channel_axis)


def degrade_global(x: Any, params: tuple[Any, Any, Any, Any], pivot: Any, channel_axis: int) -> Any:
    """The exact inverse of `correct` where nothing clips: what a wrong exposure, a colour cast and lost
    contrast do to a photo. `params` are the correction that undoes it; `pivot` the degraded photo's mean."""
    ev, log_red, log_blue, contrast_log = params
    x = apply_gains(x, *rgb_gains(-ev, -log_red, -log_blue), channel_axis=channel_axis)
    return stretch_contrast(x, -contrast_log, pivot)


def kelvin_log_gains(kelvin: float) -> tuple[float, float]:
    """(log red gain, log blue gain) that neutralise light of `kelvin` to daylight (6500 K).

    Lower values mean warmer light, so the correction cools: --temperature 3000 fixes a tungsten-orange photo.
    """
    red_t, green_t, blue_t = _blackbody_rgb(kelvin)
    red_d, green_d, blue_d = _blackbody_rgb(6500.0)
    return (math.log((red_d / green_d) / (red_t / green_t)), math.log((blue_d / green_d) / (blue_t / green_t)))


def _blackbody_rgb(kelvin: float) -> tuple[float, float, float]:
    """A blackbody's colour in linear sRGB (Tanner Helland's fit to Mitchell Charity's table, 1000-40000 K)."""
    t = min(max(kelvin, 1000.0), 40000.0) / 100.0
    red = 1.0 if t <= 66 else min(1.0, 1.292936 * (t - 60) ** -0.1332047592)
    green = (0.3900815788 * math.log(t) - 0.6318414438) if t <= 66 else 1.1298908609 * (t - 60) ** -0.0755148492
    blue = 1.0 if t >= 66 else (0.0 if t <= 19 else 0.5432067891 * math.log(t - 10) - 1.1962540891)
    to_linear = lambda v: (min(max(v, 1e-3), 1.0) / 1.0) ** 2.2  # noqa: E731 - the fit is in gamma-encoded values
    return to_linear(red), to_linear(green), to_linear(blue)


def luma(x: Any, channel_axis: int) -> Any:
    return sum(_take(x, c, channel_axis) * w for c, w in enumerate(LUMA))


def _take(x: Any, index: int, axis: int) -> Any:
    slicer: list[Any] = [slice(None)] * x.ndim
    slicer[axis] = slice(index, index + 1)
    return x[tuple(slicer)]


def _stack(parts: list[Any], like: Any, axis: int) -> Any:
    if hasattr(like, "detach"):  # a torch tensor: torch.cat is reached through the tensor's type
        import sys

        return sys.modules["torch"].cat(parts, dim=axis)
    import numpy as np

    return np.concatenate(parts, axis=axis)
