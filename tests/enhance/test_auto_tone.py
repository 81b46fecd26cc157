"""Automatic tone: a photo's lost contrast comes back from its black point and its exposure from its white point,
read through the UNet where noise hides them; a flat or thin one keeps the head's; a preview and the full-size
photo get the same."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from PIL import Image

from clipalbum.server.enhance.cases import degrade_case
from clipalbum.server.enhance.color import GlobalParams, apply_gains, correct, degrade_global
from clipalbum.server.enhance.noise import estimate_sigma
from clipalbum.server.enhance.tone import (HEAD_DARKEN_EV, MAX_BRIGHTEN_EV, NOISY_LEVELS, VIEW_SIDE, auto_contrast,
                                           auto_exposure, black_point_contrast, read_tone, tone_view, white_point_ev)
from clipalbum.server.enhance.manifest import PACKAGED_ENHANCER
from clipalbum.server.enhance.runtime import EnhanceOptions, Enhancer, photo_pivot
from tests.enhance.conftest import real_photo

needs_packaged = pytest.mark.skipif(not (PACKAGED_ENHANCER / "enhancer.json").is_file(),
                                    reason="the packaged enhancer is not installed")
NONE = GlobalParams()


def darker(photo: np.ndarray, ev: float) -> np.ndarray:
    scale = np.float32(2.0 ** -ev)
    out = apply_gains(photo.astype(np.float32) / 255, scale, scale, scale, channel_axis=-1)
    return (out * 255).round().astype(np.uint8)


def noisy(photo: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    out = photo + np.random.default_rng(seed).normal(0, sigma, photo.shape)
    return out.clip(0, 255).round().astype(np.uint8)


def pivot(photo: np.ndarray) -> float:
    return float(photo_pivot(photo))


def test_the_white_point_undoes_an_underexposure_and_never_darkens() -> None:
    photo = real_photo("coffee.png")  # its highlights reach white
    assert white_point_ev(photo, NONE, pivot(photo)) == 0.0
    for ev in (0.5, 1.5):
        dark = darker(photo, ev)
        assert white_point_ev(dark, NONE, pivot(dark)) == pytest.approx(ev, abs=0.05)
    assert white_point_ev(np.zeros((8, 8, 3), dtype=np.uint8), NONE, 0.0) == MAX_BRIGHTEN_EV


def test_the_white_point_is_read_after_the_colour_and_contrast_correction() -> None:
    dark = darker(real_photo("coffee.png"), 1.0)
    plain = white_point_ev(dark, NONE, pivot(dark))
    # Red and blue doubled reach white sooner: less to brighten. More contrast lifts the highlights too.
    red_and_blue_doubled = GlobalParams(log_gain_red=math.log(2), log_gain_blue=math.log(2))
    assert white_point_ev(dark, red_and_blue_doubled, pivot(dark)) < plain - 0.5
    assert white_point_ev(dark, GlobalParams(contrast_log=math.log(2)), pivot(dark)) < plain - 0.5
    assert white_point_ev(dark, GlobalParams(exposure_ev=2.0), pivot(dark)) == plain  # its own exposure is ignored


def test_auto_exposure_picks_the_white_point_or_the_head() -> None:
    photo = real_photo("coffee.png")
    dark = darker(photo, 1.0)
    head = GlobalParams(exposure_ev=0.4)
    assert auto_exposure(read_tone(dark), head, NONE, pivot(dark)) == pytest.approx(1.0, abs=0.05)
    grainy = noisy(dark, 20)
    assert white_point_ev(grainy, NONE, pivot(grainy)) < 0.5  # of 1 EV: noise lifts the highlights
    assert auto_exposure(read_tone(grainy), head, NONE, pivot(grainy)) == 0.4  # and without a denoiser, the head's
    # At white already: no change, unless the head darkens clearly (an over-exposed photo).
    assert auto_exposure(read_tone(photo), GlobalParams(exposure_ev=-HEAD_DARKEN_EV / 2), NONE, pivot(photo)) == 0.0
    assert auto_exposure(read_tone(photo), GlobalParams(exposure_ev=-0.8), NONE, pivot(photo)) == -0.8
    # A flat photo (a grey card, fog) has no highlights to read: the head's, not +2 EV to pure white.
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)
    assert white_point_ev(grey, NONE, pivot(grey)) > 2
    assert auto_exposure(read_tone(grey), head, NONE, pivot(grey)) == 0.4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. numpy's "mean of empty slice"
        for shape in ((1, 1, 3), (1, 9, 3)):  # too thin to measure: the head's
            assert auto_exposure(read_tone(np.full(shape, 60, dtype=np.uint8)), head, NONE, 60 / 255) == 0.4


def test_a_noisy_photo_is_read_through_the_callers_denoiser_and_a_clean_one_never_is() -> None:
    seen = []

    def denoise(view: np.ndarray) -> np.ndarray:
        seen.append(view.shape)
        return darker(real_photo("coffee.png"), 1.0)  # what a perfect denoiser would give back

    dark = darker(real_photo("coffee.png"), 1.0)
    assert read_tone(dark, denoise).readable and seen == []  # clean: read as it is
    reading = read_tone(noisy(dark, 20), denoise)
    assert seen == [dark.shape] and reading.readable
    assert auto_exposure(reading, GlobalParams(exposure_ev=0.4), NONE, pivot(dark)) == pytest.approx(1.0, abs=0.05)
    assert not read_tone(noisy(dark, 20)).readable  # no denoiser: the head's
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)  # denoised, still flat: nothing to read
    assert not read_tone(noisy(grey, 20), lambda view: grey).readable


def faded(photo: np.ndarray, contrast_log: float) -> np.ndarray:
    x = photo.astype(np.float32) / 255
    out = degrade_global(x, (0.0, 0.0, 0.0, np.float32(contrast_log)), np.float32(x.mean()), channel_axis=-1)
    return (out * 255).round().astype(np.uint8)


def test_the_black_point_gives_back_lost_contrast_and_leaves_an_underexposure_alone() -> None:
    photo = real_photo("coffee.png")  # holds black: its contrast needs nothing
    assert black_point_contrast(photo, pivot(photo)) < 0.02
    assert black_point_contrast(darker(photo, 1.5), pivot(darker(photo, 1.5))) < 0.02  # dark, not faded
    for lost in (0.2, 0.5):
        flat = faded(photo, lost)
        assert black_point_contrast(flat, pivot(flat)) == pytest.approx(lost, abs=0.03)
    head = GlobalParams(contrast_log=0.1)
    flat = faded(photo, 0.3)
    assert auto_contrast(read_tone(flat), head, NONE, pivot(flat)) == pytest.approx(0.3, abs=0.03)
    # Highlights at white: nothing was lost, whatever the blacks say (a misty scene holds no black).
    misty = (photo.astype(np.float32) * 0.8 + 51).round().astype(np.uint8)  # black lifted to 51, white kept
    assert black_point_contrast(misty, pivot(misty)) > 0.1
    assert auto_contrast(read_tone(misty), head, NONE, pivot(misty)) == 0.0
    # Just short of white: stretched only as far as white, not burnt out.
    hazy = (photo.astype(np.float32) * 0.76 + 51).round().astype(np.uint8)  # black 51, white 245
    stretch = auto_contrast(read_tone(hazy), head, NONE, pivot(hazy))
    assert 0 < stretch < black_point_contrast(hazy, pivot(hazy))
    stretched = correct(hazy.astype(np.float32) / 255, (0.0, 0.0, 0.0, stretch), np.float32(pivot(hazy)), -1)
    brightest = stretched.max(axis=-1)
    assert (brightest >= 1.0).mean() < 0.01
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)  # no black, no white: the head's
    assert black_point_contrast(grey, pivot(grey)) == 0.0
    assert auto_contrast(read_tone(grey), head, NONE, pivot(grey)) == 0.1
    black = np.zeros((64, 64, 3), dtype=np.uint8)  # nothing to read: the head's, not +2.5 EV
    assert not read_tone(black).readable
    assert auto_exposure(read_tone(black), GlobalParams(exposure_ev=0.4), NONE, 0.0) == 0.4


def test_a_preview_and_the_full_size_photo_get_the_same_exposure() -> None:
    # A dark, noisy 3.8 MP photo: at full size its noise (about 15 levels) would hide the highlights; the exposure
    # is read from the photo averaged down to about the web page's preview, as the preview itself is.
    base = Image.fromarray(darker(real_photo("coffee.png"), 1.0)).resize((2400, 1600), Image.Resampling.BICUBIC)
    full = noisy(np.asarray(base), 15, seed=1)
    preview = np.asarray(Image.fromarray(full).resize((VIEW_SIDE, VIEW_SIDE * 2 // 3), Image.Resampling.BOX))
    assert max(tone_view(full).shape) <= VIEW_SIDE
    head = GlobalParams(exposure_ev=0.2)
    at_full = auto_exposure(read_tone(full), head, NONE, pivot(full))
    at_preview = auto_exposure(read_tone(preview), head, NONE, pivot(preview))
    assert at_full != 0.2 and at_full == pytest.approx(at_preview, abs=0.1)
    assert at_full == pytest.approx(1.0, abs=0.15)


@needs_packaged
def test_the_enhancer_takes_tone_from_the_photo_colour_from_the_head_and_a_prompt_moves_both() -> None:
    enhancer = Enhancer(PACKAGED_ENHANCER)
    under = degrade_case(real_photo("coffee.png"), "under", seed=0)  # -1.5 EV, clean
    params = enhancer.resolve_params(under, EnhanceOptions(), None, None)
    head = enhancer.predict_params(under)
    # colour the head's; contrast from the black point (none lost); exposure read after both
    assert (params.log_gain_red, params.log_gain_blue) == (head.log_gain_red, head.log_gain_blue)
    assert params.contrast_log == black_point_contrast(under, pivot(under)) < 0.02
    assert params.exposure_ev == white_point_ev(under, params, pivot(under)) == pytest.approx(1.5, abs=0.05)
    _, applied = enhancer.enhance(under)
    assert applied.params == params
    flat = faded(real_photo("coffee.png"), 0.3)  # contrast lost: the black point gives it back
    assert enhancer.resolve_params(flat, EnhanceOptions(), None, None).contrast_log == pytest.approx(0.3, abs=0.05)
    fixed = enhancer.resolve_params(flat, EnhanceOptions(contrast=0.0), None, None)  # exposure still auto
    assert fixed.contrast_log == 0.0 and fixed.exposure_ev == white_point_ev(flat, fixed, pivot(flat))
    # A fixed temperature changes the colour the white point is read after.
    tungsten = enhancer.resolve_params(under, EnhanceOptions(temperature=3000), None, None)
    assert tungsten.exposure_ev == white_point_ev(under, tungsten, pivot(under)) != params.exposure_ev
    prompt = (np.random.default_rng(0).standard_normal((1, enhancer.embed_dim)) * 0.1).astype(np.float32)  # a mild one
    prompted_head = enhancer.predict_params(under, None, prompt)
    shift = prompted_head.exposure_ev - head.exposure_ev
    assert shift != 0.0
    prompted = enhancer.resolve_params(under, EnhanceOptions(), None, prompt)
    assert prompted.exposure_ev == pytest.approx(white_point_ev(under, prompted, pivot(under)) + shift, abs=1e-6)
    assert prompted.contrast_log == pytest.approx(params.contrast_log + prompted_head.contrast_log - head.contrast_log)
    # The user's value wins over auto.
    assert enhancer.resolve_params(under, EnhanceOptions(exposure=0.25), None, prompt).exposure_ev == 0.25


@needs_packaged
def test_the_enhancer_reads_a_noisy_photos_tone_once_its_unet_has_denoised_it() -> None:
    enhancer = Enhancer(PACKAGED_ENHANCER)
    for ev, sigma in ((0.0, 25), (1.5, 20)):  # the eval's noise25, and darker and noisier than its combined
        photo = noisy(darker(real_photo("rocket.jpg"), ev), sigma)  # its clean highlights reach white
        head = enhancer.predict_params(photo)
        params = enhancer.resolve_params(photo, EnhanceOptions(), None, None)
        assert params.exposure_ev == pytest.approx(ev, abs=0.15)
        assert abs(params.contrast_log) < 0.1
        view = enhancer.denoised_view(tone_view(photo), head)
        assert float(estimate_sigma(view.astype(np.float32) / 255, channel_axis=-1)) * 255 < NOISY_LEVELS / 3
        assert params.exposure_ev == white_point_ev(view, params, pivot(photo))


@needs_packaged
def test_fixed_tone_skips_the_views_denoising_and_tiny_noisy_photos_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    enhancer = Enhancer(PACKAGED_ENHANCER)
    photo = noisy(darker(real_photo("rocket.jpg"), 1.0), 20)
    calls = []
    real = enhancer.denoised_view
    monkeypatch.setattr(enhancer, "denoised_view", lambda view, head: calls.append(view.shape) or real(view, head))
    fixed = enhancer.resolve_params(photo, EnhanceOptions(exposure=0.5, contrast=0.0), None, None)
    assert calls == [] and (fixed.exposure_ev, fixed.contrast_log) == (0.5, 0.0)
    enhancer.resolve_params(photo, EnhanceOptions(), None, None)
    assert calls == [photo.shape]
    for shape in ((2, 2, 3), (3, 5, 3), (7, 9, 3)):  # smaller than the UNet's multiple: padded, not a crash
        tiny = noisy(np.full(shape, 90, dtype=np.uint8), 40, seed=2)
        out, applied = enhancer.enhance(tiny)
        assert out.shape == shape and out.dtype == np.uint8 and all(math.isfinite(v) for v in applied.params)
    assert calls[1:] == [(2, 2, 3), (3, 5, 3), (7, 9, 3)]  # each was read through the denoiser
