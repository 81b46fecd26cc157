"""A tiny enhancer trained and exported here (seconds on a CPU): it proves the pipeline, not quality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, skimage_data_dir

TRAIN_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")


@pytest.fixture(scope="session")
def tiny_enhancer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("diffusers", reason="training the enhancer needs clipalbum[train]")
    from clipalbum.training.enhance.cli import main

    photos = tmp_path_factory.mktemp("enhance-photos")
    for name in TRAIN_PHOTOS:
        shutil.copy2(skimage_data_dir() / name, photos / name)
    run = tmp_path_factory.mktemp("enhance-runs") / "tiny"
    cache = REPO / ".cache" / "enhance"  # the CLIP guide, built once (about a minute) and reused
    code = main(["train", "tiny", "--quiet", "--out", str(run), "--set", f"data.folders={json.dumps([str(photos)])}",
                 "--set", f"train.cache_dir={json.dumps(str(cache))}"])
    assert code == 0
    return run


@pytest.fixture(scope="session")
def tiny_enhancer(tiny_enhancer_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clipalbum.export.enhance_cli import main

    out = tmp_path_factory.mktemp("enhancers") / "tiny"
    assert main(["export", str(tiny_enhancer_run), str(out), "--tile", "128"]) == 0
    return out


def real_photo(name: str = "coffee.png") -> np.ndarray:
    return np.asarray(Image.open(skimage_data_dir() / name).convert("RGB"))
