"""Photo decoding for every supported format, and the model-input transform shared by serving and training."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipalbum.server.bundle import ImageSpec
from clipalbum.server.errors import ImageDecodeError
from clipalbum.server.preprocess import HEIF_SUPPORTED, decode_photo, load_model_input, to_model_input
from tests.conftest import skimage_data_dir

FORMATS = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"] + (["HEIF"] if HEIF_SUPPORTED else [])


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return Image.open(skimage_data_dir() / "chelsea.png").convert("RGB")  # 451 x 300


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_supported_format_decodes_to_an_upright_rgb_photo(cat: Image.Image, fmt: str) -> None:
    buffer = io.BytesIO()
    cat.save(buffer, format=fmt)
    photo = decode_photo(buffer.getvalue(), min_side=64)
    assert photo.image.mode == "RGB" and (photo.width, photo.height) == cat.size
    # Same picture, whatever the codec did to it: compare a coarse version.
    small = np.asarray(photo.image.resize((45, 30)), dtype=np.float32)
    assert np.abs(small - np.asarray(cat.resize((45, 30)), dtype=np.float32)).mean() < 12


def test_an_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue", "green")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    pixel = decode_photo(buffer.getvalue(), min_side=16).image.getpixel((32, 32))
    assert pixel[0] > 200 and pixel[2] < 50


def test_transparency_becomes_white_and_16_bit_is_scaled() -> None:
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    assert decode_photo(buffer.getvalue(), min_side=8).image.getpixel((0, 0)) == (255, 255, 255)
    deep = Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16))
    buffer = io.BytesIO()
    deep.save(buffer, format="PNG")
    assert decode_photo(buffer.getvalue(), min_side=8).image.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("data, reason", [
    (b"", "not a supported image"),
    (b"definitely not a photo", "not a supported image"),
])
def test_non_images_get_a_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=reason):
        decode_photo(data)


def test_a_truncated_jpeg_gets_a_clear_error(cat: Image.Image) -> None:
    buffer = io.BytesIO()
    cat.save(buffer, format="JPEG")
    with pytest.raises(ImageDecodeError, match="unreadable"):
        decode_photo(buffer.getvalue()[: len(buffer.getvalue()) // 3])


def test_images_over_the_pixel_cap_are_refused_before_decoding(cat: Image.Image) -> None:
    buffer = io.BytesIO()
    cat.save(buffer, format="PNG")
    with pytest.raises(ImageDecodeError, match="over the"):
        decode_photo(buffer.getvalue(), max_pixels=100_000)


def test_model_input_is_normalised_chw_of_the_manifest_size(cat: Image.Image, tmp_path: Path) -> None:
    spec = ImageSpec(size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    for resize in ("shortest_crop", "squash"):
        x = to_model_input(cat, ImageSpec(size=64, resize=resize, mean=spec.mean, std=spec.std))
        assert x.shape == (3, 64, 64) and x.dtype == np.float32
        assert -2.0 - 1e-6 <= x.min() and x.max() <= 2.0 + 1e-6  # (0..1 - 0.5) / 0.25
    path = tmp_path / "cat.png"
    cat.save(path)
    np.testing.assert_array_equal(load_model_input(path, spec), to_model_input(cat, spec))


def test_an_unknown_resize_mode_names_itself(cat: Image.Image) -> None:
    spec = ImageSpec(size=64, resize="zoom")  # type: ignore[arg-type]  # as a hand-edited manifest might say
    with pytest.raises(ValueError, match="zoom"):
        to_model_input(cat, spec)
