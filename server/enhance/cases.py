"""The evaluation's degradations: fixed, seeded versions of what the enhancer must undo (numpy, no torch).

combined: -1 EV in linear light, a warm or cool cast (red and blue gains 15-30 % apart), Gaussian noise
sigma 15 on 8-bit values; noise25: sigma 25 alone; under: -1.5 EV alone; cast: the cast alone. Results
are rounded to 8 bits, as a saved photo would be.
"""

from __future__ import annotations

import math
import zlib
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from clipalbum.server.enhance.color import GlobalParams, apply_gains

CASES = ("combined", "noise25", "under", "cast")


def _cast_gains(rng: np.random.Generator) -> tuple[float, float]:
    """Red and blue gains of a warm (red up, blue down) or cool cast, each 15-30 % away from 1."""
    strength_red, strength_blue = rng.uniform(0.15, 0.30, size=2)
    warm = rng.random() < 0.5
    return (1 + strength_red, 1 - strength_blue) if warm else (1 - strength_red, 1 + strength_blue)


class CaseDegradation(NamedTuple):
    exposure_ev: float  # added in linear light (negative: darker)
    red_gain: float  # linear-light multipliers of red and blue (the cast)
    blue_gain: float
    sigma: float  # Gaussian noise on 8-bit values


def _draw(case: str, seed: int, key: str) -> tuple[CaseDegradation, np.random.Generator]:
    """The case's degradation and the generator its noise comes from, both fixed by (case, seed, key)."""
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; one of {', '.join(CASES)}")
    rng = np.random.default_rng([seed, CASES.index(case), zlib.crc32(key.encode())])
    ev, red, blue, sigma = 0.0, 1.0, 1.0, 0.0
    if case == "combined":
        ev, sigma = -1.0, 15.0
        red, blue = _cast_gains(rng)
    elif case == "noise25":
        sigma = 25.0
    elif case == "under":
        ev = -1.5
    elif case == "cast":
        red, blue = _cast_gains(rng)
    return CaseDegradation(ev, red, blue, sigma), rng


def case_correction(case: str, seed: int, key: str = "") -> GlobalParams:
    """The global correction that exactly undoes the case's exposure and cast (what a perfect head predicts)."""
    d, _ = _draw(case, seed, key)
    return GlobalParams(-d.exposure_ev, -math.log(d.red_gain), -math.log(d.blue_gain), 0.0)


def degrade_case(clean: npt.NDArray[np.uint8], case: str, seed: int, key: str = "") -> npt.NDArray[np.uint8]:
    """clean: (H, W, 3) uint8. The same (case, seed, key) always gives the same degradation."""
    d, rng = _draw(case, seed, key)
    x = clean.astype(np.float32) / 255
    scale = np.float32(2.0 ** d.exposure_ev)
    x = apply_gains(x, np.float32(d.red_gain) * scale, scale, np.float32(d.blue_gain) * scale, channel_axis=-1)
    if d.sigma:
        x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(d.sigma / 255)
    return (x.clip(0, 1) * 255).round().astype(np.uint8)
