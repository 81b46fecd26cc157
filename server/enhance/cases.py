"""The evaluation's degradations: fixed, seeded versions of what the enhancer must undo (numpy, no torch).

combined: -1 EV in linear light, a warm or cool cast (red and blue gains 15-30 % apart), Gaussian noise
sigma 15 on 8-bit values; noise25: sigma 25 alone; under: -1.5 EV alone; cast: the cast alone. Results
are rounded to 8 bits, as a saved photo would be.
"""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt

from clipalbum.server.enhance.color import apply_gains

CASES = ("combined", "noise25", "under", "cast")


def _cast_gains(rng: np.random.Generator) -> tuple[float, float]:
    """Red and blue gains of a warm (red up, blue down) or cool cast, each 15-30 % away from 1."""
    strength_red, strength_blue = rng.uniform(0.15, 0.30, size=2)
    warm = rng.random() < 0.5
    return (1 + strength_red, 1 - strength_blue) if warm else (1 - strength_red, 1 + strength_blue)


def degrade_case(clean: npt.NDArray[np.uint8], case: str, seed: int, key: str = "") -> npt.NDArray[np.uint8]:
    """clean: (H, W, 3) uint8. The same (case, seed, key) always gives the same degradation."""
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; one of {', '.join(CASES)}")
    rng = np.random.default_rng([seed, CASES.index(case), zlib.crc32(key.encode())])
    x = clean.astype(np.float32) / 255
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
    scale = np.float32(2.0 ** ev)
    x = apply_gains(x, np.float32(red) * scale, scale, np.float32(blue) * scale, channel_axis=-1)
    if sigma:
        x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma / 255)
    return (x.clip(0, 1) * 255).round().astype(np.uint8)
