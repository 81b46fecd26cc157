"""--denoise auto: the UNet's residual by the photo's noise level, none (and no UNet run) on a clean photo."""

from __future__ import annotations

import numpy as np
import pytest

from clipalbum.server.enhance import runtime
from clipalbum.server.enhance.cases import degrade_case
from clipalbum.server.enhance.evaluate import globally_corrected
from clipalbum.server.enhance.manifest import PACKAGED_ENHANCER
from clipalbum.server.enhance.noise import estimate_sigma
from clipalbum.server.enhance.runtime import AUTO_DENOISE_RAMP, EnhanceOptions, Enhancer, auto_denoise
from tests.enhance.conftest import real_photo

needs_packaged = pytest.mark.skipif(not (PACKAGED_ENHANCER / "enhancer.json").is_file(),
                                    reason="the packaged enhancer is not installed")


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


@needs_packaged
def test_a_clean_photo_gets_the_global_correction_alone(enhancer: Enhancer, monkeypatch: pytest.MonkeyPatch) -> None:
    under = degrade_case(real_photo("coffee.png"), "under", seed=0)  # dark but clean: estimated sigma 2.0 levels
    counting = CountingUNet(enhancer.unet)
    monkeypatch.setattr(enhancer, "unet", counting)
    result, applied = enhancer.enhance(under)
    assert counting.runs == 0 and applied.denoise == 0.0
    assert np.abs(result.astype(int) - globally_corrected(under, applied.params).astype(int)).max() <= 1
    denoised, _ = enhancer.enhance(under, EnhanceOptions(denoise=1.0))  # asked for: the UNet runs
    assert counting.runs > 0 and np.abs(denoised.astype(int) - result.astype(int)).mean() > 0.5


@needs_packaged
def test_auto_takes_the_strength_its_noise_estimate_gives(enhancer: Enhancer, monkeypatch: pytest.MonkeyPatch) -> None:
    noisy = degrade_case(real_photo("coffee.png"), "noise25", seed=0)
    assert np.array_equal(enhancer.enhance(noisy)[0], enhancer.enhance(noisy, EnhanceOptions(denoise=1.0))[0])
    # a ramp centred on this photo's estimate: auto is half the UNet's correction
    sigma = float(estimate_sigma(noisy.astype(np.float32) / 255, channel_axis=-1)) * 255
    monkeypatch.setattr(runtime, "AUTO_DENOISE_RAMP", (sigma - 1, sigma + 1))
    half, _ = enhancer.enhance(noisy)
    assert np.array_equal(half, enhancer.enhance(noisy, EnhanceOptions(denoise=0.5))[0])
    assert not np.array_equal(half, enhancer.enhance(noisy, EnhanceOptions(denoise=1.0))[0])
