"""Fixtures for training tests: a captioned album of real photos and tiny configs (CPU, seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="training tests need clipalbum[train]")

from tests.conftest import SAMPLE_PHOTOS  # noqa: E402
from clipalbum.training.config import Config, load_config  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny-cpu.toml"

# Two more captions per sample photo, so a photo has several as in Flickr.
EXTRA_CAPTIONS = {
    "chelsea.png": ["a tabby cat looking up", "a cat with green eyes"],
    "coffee.png": ["coffee in a white cup on a saucer", "a cup of coffee on a table"],
    "astronaut.png": ["an astronaut in a white space suit", "a portrait of an astronaut with a flag"],
    "rocket.jpg": ["a space shuttle ready for launch", "a rocket standing on the pad"],
    "motorcycle_left.png": ["a red motorcycle seen from the side", "a motorbike parked indoors"],
    "hubble_deep_field.jpg": ["many galaxies in deep space", "a telescope image of distant galaxies"],
    "page.png": ["a scanned page of text", "printed words on a page"],
    "retina.jpg": ["a photo of the back of an eye", "blood vessels of a retina"],
}


@pytest.fixture()
def captioned_album(sample_album: Path) -> Path:
    """The sample album with captions.csv (image,caption, paths relative to the album), 3 captions a photo."""
    with (sample_album / "captions.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for photo in sorted(sample_album.rglob("*")):
            if photo.name in SAMPLE_PHOTOS:
                name = str(photo.relative_to(sample_album))
                for caption in [SAMPLE_PHOTOS[photo.name], *EXTRA_CAPTIONS[photo.name]]:
                    writer.writerow([name, caption])
    return sample_album


def tiny_config(out_dir: Path, album: Path, *overrides: str) -> Config:
    """The shipped tiny CPU preset on a captioned album (a csv source), with `key=value` overrides."""
    source = json.dumps(str(album / "captions.csv"))
    images = json.dumps(str(album))
    return load_config(TINY, [f"data.sources=[{{format=\"csv\", path={source}, images={images}}}]",
                              f"train.out_dir={json.dumps(str(out_dir))}", *overrides])
