"""Splits a captions CSV by photo into train and held-out CSVs (deterministic; no photo in both)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipalbum.training.config import SourceCfg
from clipalbum.training.data import DataReport, images_dir, load_photos, split_by_photo, write_caption_csv


@dataclass
class SplitResult:
    train_csv: Path
    heldout_csv: Path
    train_photos: int
    heldout_photos: int
    report: DataReport


def split_captions(captions: Path, out_dir: Path, heldout: float = 0.2, seed: int = 0,
                   images: Path | None = None, fmt: str = "csv") -> SplitResult:
    """Writes OUT/train.csv and OUT/heldout.csv (`image,caption`, image names relative to the images folder).

    The photos are never copied: both CSVs name files in the original images folder.
    """
    source = SourceCfg(format=fmt, path=str(Path(captions).resolve()),
                       images=str(Path(images).resolve()) if images else "")
    photos, report = load_photos([source], verify_images=True)
    base = images_dir(source).resolve()  # the CSVs name photos relative to it, as `clipalbum eval --images` reads
    train, held = split_by_photo(photos, heldout, seed)
    out_dir = Path(out_dir)
    train_csv, heldout_csv = out_dir / "train.csv", out_dir / "heldout.csv"
    write_caption_csv(train, train_csv, relative_to=base)
    write_caption_csv(held, heldout_csv, relative_to=base)
    return SplitResult(train_csv, heldout_csv, len(train), len(held), report)
