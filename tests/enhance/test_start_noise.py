"""The numpy side of sampling that needs no torch: the start noise and the noise map."""

from __future__ import annotations

import numpy as np

from clipalbum.server.enhance.color import correct
from clipalbum.server.enhance.noise import noise_map
from clipalbum.server.enhance.runtime import position_noise
from tests.enhance.conftest import real_photo


def test_start_noise_is_standard_normal_keyed_to_place_and_seed() -> None:
    noise = position_noise(seed=3, top=40, left=16, height=96, width=128)
    assert noise.shape == (1, 12, 96, 128) and noise.dtype == np.float32 and np.isfinite(noise).all()
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1) < 0.01
    flat = noise[0].reshape(12, -1)
    assert np.abs(np.corrcoef(flat) - np.eye(12)).max() < 0.03  # channels (and the c / c + 6 pairs) independent
    # An overlapping window reads the same values where it overlaps: tiles agree on their shared context.
    other = position_noise(seed=3, top=70, left=0, height=50, width=60)
    assert np.array_equal(noise[:, :, 30:80, :44], other[:, :, :, 16:])
    assert np.abs(np.corrcoef(noise.ravel(), position_noise(4, 40, 16, 96, 128).ravel())[0, 1]) < 0.02


def test_the_noise_map_uses_the_corrected_photo_it_is_given() -> None:
    x = real_photo("coffee.png")[:64, :64].astype(np.float32).transpose(2, 0, 1)[None] / 255
    params = tuple(np.float32(v) for v in (0.7, 0.1, -0.2, 0.3))
    pivot, sigma = np.float32(x.mean()), np.float32(0.05)
    corrected = correct(x, params, pivot, channel_axis=1)
    computed = noise_map(x, params, pivot, sigma, channel_axis=1)
    assert np.array_equal(computed, noise_map(x, params, pivot, sigma, channel_axis=1, corrected=corrected))
    # the slope is taken against what it is given: one level more there, 64 x sigma / 255 less per level
    shifted = noise_map(x, params, pivot, sigma, channel_axis=1, corrected=corrected + np.float32(1 / 255))
    assert np.allclose(computed - shifted, 64 / 255 * sigma, atol=1e-4)
