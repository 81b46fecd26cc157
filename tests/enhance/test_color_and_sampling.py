"""The enhancer's shared maths: one implementation for numpy (serving) and torch (training), checked both ways."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipalbum.server.enhance import ddim
from clipalbum.server.enhance.color import correct, degrade_global, kelvin_log_gains, linear_to_srgb, srgb_to_linear
from clipalbum.server.enhance.noise import estimate_sigma
from clipalbum.server.enhance.runtime import pixel_shuffle, plan_tiles
from tests.conftest import skimage_data_dir

torch = pytest.importorskip("torch", reason="the torch side of each check needs clipalbum[train]")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(skimage_data_dir() / "astronaut.png").convert("RGB"))


def test_correction_undoes_the_global_degradation_in_numpy_and_torch(photo: np.ndarray) -> None:
    x = photo.astype(np.float32) / 255 * 0.8  # no clipping either way
    params = (np.float32(0.7), np.float32(0.2), np.float32(-0.15), np.float32(0.3))
    degraded = degrade_global(x, params, np.float32(0.4), channel_axis=-1)
    assert np.abs(degraded - x).mean() > 0.05
    assert np.abs(correct(degraded, params, np.float32(0.4), channel_axis=-1) - x).max() < 1e-4
    t = torch.from_numpy(degraded).permute(2, 0, 1)[None]
    restored = correct(t, tuple(torch.tensor(float(p)) for p in params), 0.4, channel_axis=1)
    assert np.abs(restored[0].permute(1, 2, 0).numpy() - x).max() < 1e-4


def test_srgb_round_trip_and_a_finite_gradient_at_black() -> None:
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    assert np.abs(linear_to_srgb(srgb_to_linear(x)) - x).max() < 1e-5
    y = torch.zeros(3, requires_grad=True)
    linear_to_srgb(y).sum().backward()
    assert torch.isfinite(y.grad).all()


def test_kelvin_gains_cool_a_tungsten_photo_and_warm_a_shade_one() -> None:
    red, blue = kelvin_log_gains(3000)
    assert red < 0 < blue
    red, blue = kelvin_log_gains(9000)
    assert blue < 0 < red
    assert kelvin_log_gains(6500) == pytest.approx((0.0, 0.0), abs=1e-9)


@pytest.mark.parametrize("sigma", [5, 15, 25])
def test_noise_estimate_tracks_the_noise_the_same_in_numpy_and_torch(photo: np.ndarray, sigma: int) -> None:
    rng = np.random.default_rng(0)
    noisy = np.clip(photo + rng.normal(0, sigma, photo.shape), 0, 255).round().astype(np.float32) / 255
    estimate = float(estimate_sigma(noisy, channel_axis=-1)) * 255
    assert estimate == pytest.approx(sigma, rel=0.3, abs=3)  # texture adds a little, clipping takes some
    batch = torch.from_numpy(noisy).permute(2, 0, 1)[None]
    assert float(estimate_sigma(batch, channel_axis=-3)[0]) * 255 == pytest.approx(estimate, rel=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_numpy_ddim_matches_diffusers(steps: int) -> None:
    from clipalbum.training.enhance.model import sample_scheduler, train_scheduler

    scheduler = sample_scheduler(steps)
    alphas = train_scheduler().alphas_cumprod.double().numpy()
    assert [int(t) for t in scheduler.timesteps] == ddim.timesteps(steps, len(alphas))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, 12, 4, 4), generator=gen)
    for t in scheduler.timesteps:
        x0 = torch.randn((1, 12, 4, 4), generator=gen)
        ours = ddim.step(x0.numpy(), int(t), x.numpy(), alphas, steps)
        x = scheduler.step(x0, t, x).prev_sample
        assert np.abs(ours - x.numpy()).max() < 1e-5


def test_pixel_shuffle_matches_torch() -> None:
    x = torch.randn(1, 12, 5, 7)
    assert np.array_equal(pixel_shuffle(x[0].numpy()), torch.nn.functional.pixel_shuffle(x, 2)[0].numpy())


def test_tiles_cover_every_pixel_once_with_context_inside_the_photo() -> None:
    covered = np.zeros((130, 257), dtype=int)
    for tile in plan_tiles(130, 257, tile=64, overlap=8):
        top, left, bottom, right = tile.core
        covered[top:bottom, left:right] += 1
        ct, cl, cb, cr = tile.context
        assert 0 <= ct <= top and 0 <= cl <= left and bottom <= cb <= 130 and right <= cr <= 257
    assert (covered == 1).all()


def test_training_jpeg_matches_a_real_jpeg(photo: np.ndarray) -> None:
    from clipalbum.training.enhance.degrade import DegradeCfg, jpeg

    x = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255
    ours = jpeg(x, DegradeCfg(jpeg_p=1.0, jpeg_quality=(50, 50)), torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=50)
    real = np.asarray(Image.open(buffer), dtype=np.float64)
    mse = np.mean((ours[0].permute(1, 2, 0).numpy() * 255 - real) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 40  # the same artefacts (PSNR to the clean photo is ~32 dB)
