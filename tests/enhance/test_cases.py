"""The evaluation's degradations (numpy only): seeded, distinct, and undone exactly by their corrections."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipalbum.server.enhance.cases import CASES, case_correction, degrade_case
from clipalbum.server.enhance.evaluate import globally_corrected, psnr
from tests.conftest import skimage_data_dir


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(skimage_data_dir() / "astronaut.png").convert("RGB"))


def test_eval_cases_are_seeded_and_distinct(photo: np.ndarray) -> None:
    for case in CASES:
        a, b = degrade_case(photo, case, seed=1, key="x"), degrade_case(photo, case, seed=1, key="x")
        assert np.array_equal(a, b) and a.shape == photo.shape and a.dtype == np.uint8
        assert not np.array_equal(a, degrade_case(photo, case, seed=2, key="x")) or case == "under"
    under = degrade_case(photo, "under", 0).astype(np.float64)
    assert under.mean() < photo.mean() * 0.7  # -1.5 EV in linear light
    with pytest.raises(ValueError, match="unknown case"):
        degrade_case(photo, "blur", 0)


def test_the_cases_draw_what_the_published_figures_were_measured_with() -> None:
    # Pinned: every figure in the README was measured with these draws (a warm cast here, a cool one there).
    assert case_correction("combined", seed=0, key="astronaut.png") == pytest.approx(
        (1.0, -0.2340088232347522, 0.20488826868507232, 0.0), abs=1e-12)
    assert case_correction("cast", seed=0, key="astronaut.png") == pytest.approx(
        (0.0, -0.14256634359487444, 0.3145000447828543, 0.0), abs=1e-12)
    assert case_correction("under", seed=0) == (1.5, 0.0, 0.0, 0.0)
    assert case_correction("noise25", seed=3) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("case", ["under", "cast"])
def test_the_exact_correction_of_a_noise_free_case_undoes_it(photo: np.ndarray, case: str) -> None:
    degraded = degrade_case(photo, case, seed=3, key="astronaut.png")
    restored = globally_corrected(degraded, case_correction(case, seed=3, key="astronaut.png"))
    assert psnr(restored, photo) > psnr(degraded, photo) + 10  # only 8-bit rounding and clipped light lost
    assert psnr(restored, photo) > 38
