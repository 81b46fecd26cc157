"""Clean photos for enhancer training: loaded once onto the training device, cropped at random there."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from tqdm import tqdm

from clipalbum.server.errors import ImageDecodeError
from clipalbum.server.preprocess import PHOTO_SUFFIXES, decode_photo
from clipalbum.training.enhance.config import DataCfg

log = logging.getLogger(__name__)


def photo_files(folders: list[str]) -> list[Path]:
    files: list[Path] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"training photos folder {root} does not exist")
        files += sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no photos in {', '.join(folders) or 'data.folders (empty)'}")
    return files


def load_photo(path: Path, short_side: int) -> torch.Tensor:
    """(3, H, W) uint8 with the short side reduced to `short_side` (never enlarged)."""
    image = decode_photo(path, min_side=short_side).image
    scale = short_side / min(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class PhotoPool:
    """Every training photo on the device; `crops` draws a batch of random, randomly scaled views."""

    def __init__(self, cfg: DataCfg, device: torch.device, progress: bool = True) -> None:
        self.cfg = cfg
        self.photos: list[torch.Tensor] = []
        skipped = 0
        for path in tqdm(photo_files(cfg.folders), desc="loading photos", unit="photo", disable=not progress):
            try:
                self.photos.append(load_photo(path, cfg.short_side).to(device))
            except ImageDecodeError as exc:
                skipped += 1
                log.warning("skipping %s", exc)
        if not self.photos:
            raise ValueError("none of the training photos could be read")
        log.info("enhance training: %d photos (%d skipped)", len(self.photos), skipped)

    def crops(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        """(batch, 3, crop, crop) float 0..1: a random photo each, a random square covering min_scale..1 of its
        short side, resized to `crop`, flipped and rotated at random."""
        size = self.cfg.crop
        picks = torch.randint(len(self.photos), (batch,), generator=gen).tolist()
        draws = torch.rand((batch, 5), generator=gen).tolist()
        out = []
        for index, (s, u, v, flip, turn) in zip(picks, draws):
            photo = self.photos[index]
            _, h, w = photo.shape
            side = max(8, round(min(h, w) * (self.cfg.min_scale + (1 - self.cfg.min_scale) * s)))
            top, left = int(u * (h - side + 1)), int(v * (w - side + 1))
            view = photo[None, :, top:top + side, left:left + side].float() / 255
            if side != size:
                view = F.interpolate(view, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            if flip < 0.5:
                view = view.flip(-1)
            out.append(torch.rot90(view, int(turn * 4), dims=(-2, -1)))
        return torch.cat(out).clamp(0, 1)
