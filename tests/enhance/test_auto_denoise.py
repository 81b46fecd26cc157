"""--denoise auto: the UNet's residual by the photo's noise level, none (and no UNet run) on a clean photo."""

from __future__ import annotations

import numpy as np
import pytest

from clipalbum.server.enhance.cases import degrade_case
from clipalbum.server.enhance.evaluate import globally_corrected
from clipalbum.server.enhance.manifest import PACKAGED_ENHANCER
from clipalbum.server.enhance.runtime import AUTO_DENOISE_RAMP, EnhanceOptions, Enhancer, auto_denoise
from tests.enhance.conftest import real_photo


def test_auto_denoise_ramps_between_the_two_noise_levels() -> None:
    low, high = AUTO_DENOISE_RAMP
    assert auto_denoise(0.0) == 0.0 and auto_denoise(low / 255) == 0.0
    assert auto_denoise((low + high) / 2 / 255) == pytest.approx(0.5)
    assert auto_denoise(high / 255) == 1.0 and auto_denoise(25 / 255) == 1.0


class CountingUNet:
    """Passes runs through to the real session, counting them."""

    def __init__(self, session: object) -> None:
        self.session, self.runs = session, 0

    def run(self, *args: object) -> object:
        self.runs += 1
        return self.session.run(*args)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def enhancer() -> Enhancer:
    return Enhancer(PACKAGED_ENHANCER)


def test_a_clean_photo_gets_the_global_correction_alone(enhancer: Enhancer) -> None:
    under = degrade_case(real_photo("coffee.png"), "under", seed=0)  # dark but clean: estimated sigma 2.0 levels
    enhancer.unet = counting = CountingUNet(enhancer.unet)
    result, params = enhancer.enhance(under)
    assert counting.runs == 0
    assert np.abs(result.astype(int) - globally_corrected(under, params).astype(int)).max() <= 1
    denoised, _ = enhancer.enhance(under, EnhanceOptions(denoise=1.0))  # asked for: the UNet runs
    assert counting.runs > 0 and np.abs(denoised.astype(int) - result.astype(int)).mean() > 0.5


def test_a_noisy_photo_gets_the_whole_residual(enhancer: Enhancer) -> None:
    noisy = degrade_case(real_photo("coffee.png"), "noise25", seed=0)
    auto, _ = enhancer.enhance(noisy)
    assert np.array_equal(auto, enhancer.enhance(noisy, EnhanceOptions(denoise=1.0))[0])
