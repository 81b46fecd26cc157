"""Makes docs/enhance-strip.jpg: scikit-image photos degraded as `clipalbum enhance eval` does (combined:
-1 EV, a colour cast, noise sigma 15), then the classical pipeline, the default enhancer and the original.

    .venv/bin/python docs/enhance_strip.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]

from clipalbum.server.demo import skimage_data_dir
from clipalbum.server.encoders import load_encoders
from clipalbum.server.enhance.cases import degrade_case
from clipalbum.server.enhance.classical import classical_pipeline
from clipalbum.server.enhance.conditioning import Conditioner
from clipalbum.server.enhance.manifest import PACKAGED_ENHANCER
from clipalbum.server.enhance.runtime import Enhancer

PHOTOS = ("coffee.png", "chelsea.png", "astronaut.png")
SIDE = 300


def main() -> None:
    enhancer = Enhancer(PACKAGED_ENHANCER)
    conditioner = Conditioner(load_encoders(REPO / ".cache" / "default-bundle"), enhancer.manifest.conditioning_model_id)
    rows = []
    for name in PHOTOS:
        clean = np.asarray(Image.open(skimage_data_dir() / name).convert("RGB"))
        degraded = degrade_case(clean, "combined", seed=0, key=name)
        restored, _ = enhancer.enhance(degraded, embedding=conditioner.image(degraded))
        cells = [degraded, classical_pipeline(degraded), restored, clean]
        rows.append([Image.fromarray(c).resize((SIDE, round(SIDE * c.shape[0] / c.shape[1]))) for c in cells])
    height = sum(row[0].height for row in rows) + 24
    strip = Image.new("RGB", (4 * SIDE, height), "white")
    draw = ImageDraw.Draw(strip)
    for i, label in enumerate(("degraded (combined)", "classical pipeline", "clipalbum enhance", "original")):
        draw.text((i * SIDE + 8, 6), label, fill="black")
    y = 24
    for row in rows:
        for i, cell in enumerate(row):
            strip.paste(cell, (i * SIDE, y))
        y += row[0].height
    strip.save(REPO / "docs" / "enhance-strip.jpg", quality=88)


if __name__ == "__main__":
    main()
