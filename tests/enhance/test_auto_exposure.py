"""--exposure auto: a clean photo is brightened until its highlights reach white; a noisy one keeps the head's."""

from __future__ import annotations

import numpy as np
import pytest

from clipalbum.server.enhance.cases import degrade_case
from clipalbum.server.enhance.color import GlobalParams, apply_gains
from clipalbum.server.enhance.exposure import HEAD_DARKEN_EV, MAX_BRIGHTEN_EV, NOISY_LEVELS, auto_exposure, white_point_ev
from clipalbum.server.enhance.manifest import PACKAGED_ENHANCER
from clipalbum.server.enhance.runtime import EnhanceOptions, Enhancer, photo_noise, photo_pivot
from tests.enhance.conftest import real_photo

needs_packaged = pytest.mark.skipif(not (PACKAGED_ENHANCER / "enhancer.json").is_file(),
                                    reason="the packaged enhancer is not installed")


def darker(photo: np.ndarray, ev: float) -> np.ndarray:
    scale = np.float32(2.0 ** -ev)
    return (apply_gains(photo.astype(np.float32) / 255, scale, scale, scale, channel_axis=-1) * 255).round().astype(np.uint8)


def test_the_white_point_undoes_an_underexposure_and_never_darkens() -> None:
    photo = real_photo("coffee.png")  # its highlights reach white
    none = GlobalParams()
    assert white_point_ev(photo, none, float(photo_pivot(photo))) == 0.0
    for ev in (0.5, 1.5):
        dark = darker(photo, ev)
        assert white_point_ev(dark, none, float(photo_pivot(dark))) == pytest.approx(ev, abs=0.05)
    black = np.zeros((8, 8, 3), dtype=np.uint8)
    assert white_point_ev(black, none, 0.0) == MAX_BRIGHTEN_EV


def test_the_white_point_is_read_after_the_colour_correction() -> None:
    photo = darker(real_photo("coffee.png"), 1.0)
    pivot = float(photo_pivot(photo))
    # Halving red and blue leaves green to reach white: the same exposure or more, never less.
    cooler = white_point_ev(photo, GlobalParams(log_gain_red=np.log(0.5), log_gain_blue=np.log(0.5)), pivot)
    assert cooler >= white_point_ev(photo, GlobalParams(), pivot) - 1e-6
    assert white_point_ev(photo, GlobalParams(exposure_ev=2.0), pivot) == white_point_ev(photo, GlobalParams(), pivot)


def test_a_large_photo_is_read_on_a_grid_and_agrees_with_its_centre_crop() -> None:
    small = darker(real_photo("coffee.png"), 1.0)
    large = np.tile(small, (5, 5, 1))  # 2,000 x 3,000: read on a grid, not every pixel
    assert white_point_ev(large, GlobalParams(), float(photo_pivot(large))) == pytest.approx(
        white_point_ev(small, GlobalParams(), float(photo_pivot(small))), abs=0.02)


def test_auto_exposure_picks_the_white_point_or_the_head() -> None:
    photo = real_photo("coffee.png")
    pivot = float(photo_pivot(photo))
    dark = darker(photo, 1.0)
    head = GlobalParams(exposure_ev=0.4)
    assert auto_exposure(dark, head, float(photo_pivot(dark)), noise_levels=2.0) == pytest.approx(1.0, abs=0.05)
    assert auto_exposure(dark, head, float(photo_pivot(dark)), noise_levels=NOISY_LEVELS) == 0.4  # noise: the head
    # At white already: no change, unless the head darkens clearly (an over-exposed photo).
    assert auto_exposure(photo, GlobalParams(exposure_ev=-HEAD_DARKEN_EV / 2), pivot, 2.0) == 0.0
    assert auto_exposure(photo, GlobalParams(exposure_ev=-0.8), pivot, 2.0) == -0.8


@needs_packaged
def test_an_underexposed_photo_gets_the_white_points_exposure_and_a_prompt_still_moves_it() -> None:
    enhancer = Enhancer(PACKAGED_ENHANCER)
    under = degrade_case(real_photo("coffee.png"), "under", seed=0)  # -1.5 EV, clean
    sigma = float(photo_noise(under))
    params = enhancer.resolve_params(under, EnhanceOptions(), None, None)
    head = enhancer.predict_params(under)
    # read after the head's contrast and colour, which lift the highlights a little here
    assert params.exposure_ev == white_point_ev(under, head, float(photo_pivot(under))) and 1.3 < params.exposure_ev < 1.6
    assert params._replace(exposure_ev=0.0) == head._replace(exposure_ev=0.0)
    assert params == enhancer.resolve_params(under, EnhanceOptions(), None, None, sigma)
    _, applied = enhancer.enhance(under)
    assert applied.params == params
    prompt = np.random.default_rng(0).standard_normal((1, enhancer.embed_dim)).astype(np.float32)
    shift = enhancer.predict_params(under, None, prompt).exposure_ev - head.exposure_ev
    assert shift != 0.0
    prompted = enhancer.resolve_params(under, EnhanceOptions(), None, prompt)
    assert prompted.exposure_ev == pytest.approx(params.exposure_ev + shift, abs=1e-6)
    # The user's value wins over auto.
    assert enhancer.resolve_params(under, EnhanceOptions(exposure=0.25), None, prompt).exposure_ev == 0.25
