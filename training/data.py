"""Captioned-photo data sets: parsers for Flickr30K/Flickr8k/album layouts, splits by photo, torch data sets."""

from __future__ import annotations

import csv
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipalbum.server.bundle import ImageSpec, TextSpec
from clipalbum.server.errors import ImageDecodeError
from clipalbum.server.preprocess import PHOTO_SUFFIXES, decode_photo, open_photo, to_model_input
from clipalbum.server.textprep import TextTokenizer
from clipalbum.training.config import DataCfg, SourceCfg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Photo:
    """One photo with all its captions; the unit of every split."""

    path: Path
    captions: tuple[str, ...]


@dataclass
class DataReport:
    """Rows read and rows skipped, by reason, per source: bad rows are counted, never fatal."""

    rows: Counter = field(default_factory=Counter)  # source -> rows that became captions
    skipped: Counter = field(default_factory=Counter)  # (source, reason) -> rows skipped
    examples: dict[tuple[str, str], str] = field(default_factory=dict)  # first example per (source, reason)

    def skip(self, source: str, reason: str, example: str) -> None:
        self.skipped[(source, reason)] += 1
        self.examples.setdefault((source, reason), example)

    def merge(self, other: "DataReport") -> None:
        self.rows.update(other.rows)
        self.skipped.update(other.skipped)
        for key, value in other.examples.items():
            self.examples.setdefault(key, value)

    def total_skipped(self, reason: str | None = None) -> int:
        return sum(n for (_, r), n in self.skipped.items() if reason is None or r == reason)

    def describe(self) -> str:
        lines = [f"{source}: {n} captions" for source, n in sorted(self.rows.items())]
        for (source, reason), n in sorted(self.skipped.items()):
            lines.append(f"{source}: skipped {n} ({reason}), e.g. {self.examples[(source, reason)]}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"captions": dict(self.rows),
                "skipped": [{"source": s, "reason": r, "count": n, "example": self.examples[(s, r)]}
                            for (s, r), n in sorted(self.skipped.items())]}


Rows = list[tuple[str, str, str]]  # (image file name as written, caption, where: "file:line")


def read_flickr30k_csv(path: Path) -> Rows:
    """Flickr30K's results.csv: a header, then `image_name| comment_number| comment` per line."""
    rows: Rows = []
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if number == 1 and line.replace(" ", "").lower().startswith("image_name|"):
                continue
            parts = [p.strip() for p in line.split("|")]
            where = f"{Path(path).name}:{number}"
            if len(parts) != 3:
                rows.append(("", "", where))  # malformed: counted by the caller
            else:
                rows.append((parts[0], parts[2], where))
    return rows


def read_caption_csv(path: Path) -> Rows:
    """`image,caption` with a header (Flickr8k's captions.txt, album CSVs); unquoted commas stay in the caption."""
    rows: Rows = []
    with Path(path).open(encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return rows
        names = [h.strip().lower() for h in header]
        has_header = "image" in names and "caption" in names
        image_col, caption_col = (names.index("image"), names.index("caption")) if has_header else (0, 1)
        body = list(reader) if has_header else [header, *reader]  # no header: the first line is data
        for number, row in enumerate(body, start=2 if has_header else 1):
            where = f"{Path(path).name}:{number}"
            if len(row) < 2:
                rows.append(("", "", where))
            elif (image_col, caption_col) == (0, 1):
                rows.append((row[0].strip(), ",".join(row[1:]).strip(), where))
            elif len(row) <= max(image_col, caption_col):
                rows.append(("", "", where))
            else:
                rows.append((row[image_col].strip(), row[caption_col].strip(), where))
    return rows


def read_flickr8k_token(path: Path) -> Rows:
    """Flickr8k.token.txt: `image.jpg#0<TAB>caption` per line."""
    rows: Rows = []
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            name, sep, caption = line.rstrip("\r\n").partition("\t")
            where = f"{Path(path).name}:{number}"
            rows.append((name.split("#")[0].strip(), caption.strip(), where) if sep else ("", "", where))
    return rows


def read_karpathy_json(path: Path, splits: list[str]) -> Rows:
    """Karpathy's dataset_flickr30k.json (or _flickr8k/_coco): images with a split and tokenised sentences."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    rows: Rows = []
    for i, image in enumerate(data.get("images", [])):
        if splits and image.get("split") not in splits:
            continue
        name = str(Path(image.get("filepath", "")) / image.get("filename", ""))
        for sentence in image.get("sentences") or [{}]:
            raw = sentence.get("raw") or " ".join(sentence.get("tokens", []))
            rows.append((name if image.get("filename") else "", raw.strip(), f"{Path(path).name}:images[{i}]"))
    return rows


def read_sidecars(folder: Path) -> Rows:
    """An album with `IMG_1234.JPG` + `IMG_1234.txt`: each non-empty line of the .txt is a caption."""
    rows: Rows = []
    for photo in sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES):
        sidecar = photo.with_suffix(".txt")
        if not sidecar.is_file():
            continue  # photos without a caption file are simply not part of the data set
        lines = [line.strip() for line in sidecar.read_text(encoding="utf-8", errors="replace").splitlines()]
        captions = [line for line in lines if line] or [""]
        rows.extend((str(photo.relative_to(folder)), c, sidecar.name) for c in captions)
    return rows


def read_source(source: SourceCfg) -> Rows:
    path = Path(source.path)
    if not path.exists():
        raise FileNotFoundError(f"data source {source.format}: {path} does not exist")
    if source.format == "flickr30k_csv":
        return read_flickr30k_csv(path)
    if source.format == "csv":
        return read_caption_csv(path)
    if source.format == "flickr8k_token":
        return read_flickr8k_token(path)
    if source.format == "karpathy_json":
        return read_karpathy_json(path, source.splits)
    if source.format == "sidecar":
        return read_sidecars(path)
    raise ValueError(f"unknown data format {source.format!r}; use flickr30k_csv, karpathy_json, csv, "
                     "flickr8k_token or sidecar")


def images_dir(source: SourceCfg) -> Path:
    """The folder a source's image names are relative to: `images`, else beside the captions file."""
    if source.images:
        return Path(source.images)
    path = Path(source.path)
    if source.format == "sidecar":
        return path
    for candidate in (path.parent / "images", path.parent / "flickr30k_images", path.parent / "Images"):
        if candidate.is_dir():
            return candidate
    return path.parent


def _readable(path: Path) -> bool:
    """True if the photo's header opens within the pixel limit (a cheap check; full decoding happens in
    training), judged by the same guard as serving."""
    try:
        open_photo(path).close()
        return True
    except ImageDecodeError:
        return False


def load_photos(sources: list[SourceCfg], verify_images: bool = True) -> tuple[list[Photo], DataReport]:
    """Reads and combines sources into photos with their captions; bad rows are counted in the report."""
    report = DataReport()
    captions: dict[Path, list[str]] = {}
    for source in sources:
        label = f"{source.format}:{Path(source.path).name}"
        images = images_dir(source)
        checked: dict[Path, str | None] = {}
        for name, caption, where in read_source(source):
            if not name:
                report.skip(label, "malformed row", where)
                continue
            if not caption:
                report.skip(label, "empty caption", where)
                continue
            path = (images / name).resolve()
            if path not in checked:  # each photo is checked once, however many captions it has
                if not path.is_file():
                    checked[path] = "missing photo"
                else:
                    checked[path] = None if not verify_images or _readable(path) else "unreadable photo"
            if checked[path]:
                report.skip(label, checked[path], f"{where} {name}")
                continue
            captions.setdefault(path, []).append(" ".join(caption.split()))
            report.rows[label] += 1
    photos = [Photo(path, tuple(c)) for path, c in sorted(captions.items())]
    for line in report.describe().splitlines():
        log.info("data: %s", line)
    return photos, report


def split_by_photo(photos: list[Photo], fraction: float, seed: int) -> tuple[list[Photo], list[Photo]]:
    """Deterministic split into (rest, held out): round(fraction * photos) photos, chosen by a seeded shuffle.

    The order of `photos` does not matter (they are sorted by path first), and a photo's captions always
    stay together, so no caption of a held-out photo is ever trained on.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    ordered = sorted(photos, key=lambda p: str(p.path))
    keys = list(range(len(ordered)))
    random.Random(seed).shuffle(keys)
    held = set(keys[: round(fraction * len(ordered))])
    rest = [p for i, p in enumerate(ordered) if i not in held]
    out = [p for i, p in enumerate(ordered) if i in held]
    return rest, out


class Augment:
    """Training-only augmentation on the PIL image, before the server's own resize and normalisation."""

    def __init__(self, cfg: DataCfg, size: int) -> None:
        from torchvision.transforms import v2

        steps = [v2.RandomResizedCrop(size, scale=cfg.crop_scale, antialias=True)]
        if cfg.flip:
            steps.append(v2.RandomHorizontalFlip())
        if cfg.color_jitter > 0:
            j = cfg.color_jitter
            steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
        self.transform = v2.Compose(steps)

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.transform(image)


class PhotoCaptionDataset(torch.utils.data.Dataset):
    """Training items: (pixels, one caption of the photo), the caption drawn per epoch from a seeded generator.

    Pixels come from server.preprocess (decode_photo + to_model_input), after augmentation if any.
    A photo that fails to decode yields None; the collate function drops it and counts it.
    """

    def __init__(self, photos: list[Photo], spec: ImageSpec, augment: Augment | None = None, seed: int = 0) -> None:
        self.photos = photos
        self.spec = spec
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.photos)

    def caption_for(self, index: int) -> str:
        captions = self.photos[index].captions
        return captions[random.Random(f"{self.seed}:{self.epoch}:{index}").randrange(len(captions))]

    def __getitem__(self, index: int) -> tuple[np.ndarray, str] | None:
        photo = self.photos[index]
        try:
            image = decode_photo(photo.path, min_side=self.spec.size).image
        except ImageDecodeError as exc:
            log.warning("skipping %s: %s", photo.path, exc)
            return None
        if self.augment is not None:
            image = self.augment(image)
        return to_model_input(image, self.spec), self.caption_for(index)


class CachedFeatureDataset(PhotoCaptionDataset):
    """Training items from a frozen image tower's cached outputs: (features, one caption of the photo)."""

    def __init__(self, photos: list[Photo], features: torch.Tensor, seed: int = 0) -> None:
        assert len(photos) == len(features), f"{len(photos)} photos but {len(features)} feature rows"
        super().__init__(photos, ImageSpec(), None, seed)
        self.features = features

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        return self.features[index].numpy(), self.caption_for(index)


class Collate:
    """Stacks pixels and tokenises captions with the server's tokenizer (same ids train and serve)."""

    def __init__(self, tokenizer_file: Path, spec: TextSpec) -> None:
        self.tokenize = TextTokenizer(tokenizer_file, spec)

    def __call__(self, items: list[tuple[np.ndarray, str] | None]) -> dict[str, torch.Tensor] | None:
        good = [item for item in items if item is not None]
        if len(good) < 2:
            return None  # a contrastive batch needs at least two pairs
        tokens = self.tokenize([caption for _, caption in good])
        images = torch.from_numpy(np.stack([image for image, _ in good]))
        return {
            "pixels" if images.ndim == 4 else "features": images,  # (N, 3, S, S) pixels or (N, F) features
            "input_ids": torch.from_numpy(tokens["input_ids"]),
            "attention_mask": torch.from_numpy(tokens["attention_mask"]),
            "dropped": torch.tensor(len(items) - len(good)),
        }


def write_caption_csv(photos: list[Photo], path: Path, relative_to: Path | None = None) -> None:
    """Writes `image,caption` rows (the format `clipalbum eval` and the csv source read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for photo in photos:
            name = str(photo.path.relative_to(relative_to)) if relative_to else str(photo.path)
            for caption in photo.captions:
                writer.writerow([name, caption])
