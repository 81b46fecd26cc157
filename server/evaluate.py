"""Retrieval quality of a model bundle on a folder of photos and a captions CSV (Recall@K, no torch)."""

from __future__ import annotations

import csv
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from clipalbum.server.encoders import load_encoders
from clipalbum.server.errors import ClipalbumError, ImageDecodeError
from clipalbum.server.preprocess import load_model_input

log = logging.getLogger(__name__)

IMAGE_BATCH = 32
TEXT_BATCH = 256
MAX_EXAMPLES = 20  # skipped rows listed by name in the report; the rest are only counted
SCORE_CHUNK_ELEMENTS = 1 << 24  # similarity scores made at a time (64 MB of float32), whatever the data size


class EvalReport(msgspec.Struct):
    model_id: str
    photos: int  # gallery size: the CSV's photos that could be read
    captions: int  # queries: captions of those photos
    recall_at_1: float  # text -> image: fraction of captions whose photo ranks in the top K of the gallery
    recall_at_5: float
    recall_at_10: float
    image_recall_at_1: float  # image -> text: fraction of photos with one of their captions in the top K
    image_recall_at_5: float
    image_recall_at_10: float
    skipped_rows: int
    skipped_reasons: dict[str, int]  # reason -> number of CSV rows
    skipped_examples: list[str]  # the first few, as "row N: reason"
    seconds: float
    images_dir: str = ""
    captions_csv: str = ""

    def describe(self) -> str:
        lines = [
            f"model {self.model_id}: {self.photos} photos, {self.captions} captions ({self.seconds:.1f} s)",
            f"text -> image  Recall@1 {self.recall_at_1:.2%}  Recall@5 {self.recall_at_5:.2%}  "
            f"Recall@10 {self.recall_at_10:.2%}",
            f"image -> text  Recall@1 {self.image_recall_at_1:.2%}  Recall@5 {self.image_recall_at_5:.2%}  "
            f"Recall@10 {self.image_recall_at_10:.2%}",
        ]
        if self.skipped_rows:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped_reasons.items()))
            lines.append(f"skipped {self.skipped_rows} rows: {reasons}")
            lines += [f"  {example}" for example in self.skipped_examples]
        return "\n".join(lines)


RECALLS = ("recall_at_1", "recall_at_5", "recall_at_10", "image_recall_at_1", "image_recall_at_5",
           "image_recall_at_10")


def side_by_side(model: EvalReport, baseline: EvalReport) -> str:
    """Two bundles' recalls on the same photos and captions, and the difference in points (model - baseline):
    how a fine-tuned or imported model compares with where it started."""
    header = f"{'':<44}{'text -> image R@1 / R@5 / R@10':>32}{'image -> text R@1 / R@5 / R@10':>34}"

    def row(name: str, values: list[float], points: bool = False) -> str:
        cells = [f"{v * 100:+.2f}" if points else f"{v * 100:.2f}%" for v in values]
        return f"{name[:43]:<44}{' / '.join(cells[:3]):>32}{' / '.join(cells[3:]):>34}"

    ours = [getattr(model, k) for k in RECALLS]
    theirs = [getattr(baseline, k) for k in RECALLS]
    lines = [f"{model.photos} photos, {model.captions} captions", header, row(model.model_id, ours),
             row(baseline.model_id, theirs), row("difference (points)", [a - b for a, b in zip(ours, theirs)], True)]
    return "\n".join(lines)


def recall_at_k(
    text_vectors: npt.NDArray[np.float32],
    image_vectors: npt.NDArray[np.float32],
    caption_to_image: npt.NDArray[np.int64],
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[int, float]:
    """Text -> image Recall@K: the fraction of captions whose own image is among the K most similar.

    Args:
        text_vectors: (C, D) caption embeddings; image_vectors: (I, D) gallery embeddings (both normalised,
            or the ranking is by dot product).
        caption_to_image: (C,) index of each caption's image in image_vectors.
    Returns:
        {K: recall in 0..1}. Ties are broken by a uniformly random order, in expectation (see `_hit_chances`):
        a model that gives everything the same vector scores chance (K / I), never 100 %.
    """
    caption_to_image = np.asarray(caption_to_image, dtype=np.int64)
    if len(text_vectors) == 0:
        return {k: 0.0 for k in ks}
    gallery = np.arange(len(image_vectors))
    hits = _hit_chances(text_vectors, image_vectors,
                        lambda start, stop: gallery[None, :] == caption_to_image[start:stop, None], ks)
    return {k: float(hits[k].mean()) for k in ks}


def image_recall_at_k(
    text_vectors: npt.NDArray[np.float32],
    image_vectors: npt.NDArray[np.float32],
    caption_to_image: npt.NDArray[np.int64],
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[int, float]:
    """Image -> text Recall@K: the fraction of images with at least one of their captions in the top K
    (among all captions); ties are broken as in `recall_at_k`. An image without captions is a miss."""
    caption_to_image = np.asarray(caption_to_image, dtype=np.int64)
    if len(image_vectors) == 0 or len(text_vectors) == 0:
        return {k: 0.0 for k in ks}
    hits = _hit_chances(image_vectors, text_vectors,
                        lambda start, stop: caption_to_image[None, :] == np.arange(start, stop)[:, None], ks)
    return {k: float(hits[k].mean()) for k in ks}


def _hit_chances(queries: npt.ArrayLike, gallery: npt.ArrayLike,
                 targets: Callable[[int, int], npt.NDArray[np.bool_]], ks: tuple[int, ...]
                 ) -> dict[int, npt.NDArray[np.float64]]:
    """For each query, the probability that one of its targets is in the top K of the gallery by dot
    product, when tied scores are put in a uniformly random order (computed exactly, not sampled).

    With b gallery items strictly better than the query's best target, t items tying with it (targets
    included) and o of those t its targets, the K - b places left go to a random m = min(K - b, t) of the
    tied items, so P(hit) = 1 - C(t - o, m) / C(t, m); for one target that is min(K - b, t) / t. A NaN
    score beats nothing and ties with nothing: a query whose target scores NaN is a miss.

    Args:
        targets: (start, stop) -> (stop - start, G) mask of each query's targets among the gallery.
    """
    queries = np.asarray(queries, np.float32)
    gallery_t = np.asarray(gallery, np.float32).T
    chunk = max(1, SCORE_CHUNK_ELEMENTS // max(gallery_t.shape[1], 1))  # bounded memory on large caption sets
    hits = {k: np.empty(len(queries), dtype=np.float64) for k in ks}
    for start in range(0, len(queries), chunk):
        stop = min(start + chunk, len(queries))
        scores = queries[start:stop] @ gallery_t  # (chunk, G)
        is_target = targets(start, stop)
        best_target = np.where(is_target, scores, -np.inf).max(axis=1, keepdims=True)
        better = (scores > best_target).sum(axis=1)
        at_best = scores == best_target
        tied, tied_targets = at_best.sum(axis=1), (at_best & is_target).sum(axis=1)
        for k in ks:
            places = np.clip(k - better, 0, tied)
            all_missed = np.ones(stop - start)  # C(t - o, m) / C(t, m) as a product of m factors
            for j in range(int(places.max(initial=0))):
                factor = np.clip(tied - tied_targets - j, 0, None) / np.maximum(tied - j, 1)
                all_missed = np.where(j < places, all_missed * factor, all_missed)
            hits[k][start:stop] = 1.0 - all_missed
    return hits


def read_captions(captions_csv: Path) -> list[tuple[int, str, str]]:
    """Rows of an `image,caption` CSV as (row number, image name, caption); raises on a missing header."""
    try:
        with Path(captions_csv).open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise ClipalbumError(f"{captions_csv}: expected a CSV with the columns image,caption, "
                                     f"found {reader.fieldnames}")
            return [(reader.line_num, (row["image"] or "").strip(), (row["caption"] or "").strip())
                    for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ClipalbumError(f"cannot read captions {captions_csv}: {exc}") from exc


def evaluate_bundle(bundle_dir: Path, images_dir: Path, captions_csv: Path, progress: bool = True,
                    limit: int | None = None) -> EvalReport:
    """Every caption a query over the gallery of the CSV's photos; bad rows are counted, never fatal.

    Args:
        limit: keep only the first N photos by file name (and their captions).
    """
    started = time.perf_counter()
    images_dir = Path(images_dir)
    encoders = load_encoders(Path(bundle_dir))
    rows = read_captions(Path(captions_csv))
    skipped: list[tuple[int, str]] = []

    captions_by_photo: dict[str, list[str]] = {}
    row_lines: dict[str, list[int]] = {}  # the valid rows of each photo, to report if the photo fails
    for line, name, caption in rows:
        if not name:
            skipped.append((line, "no image name"))
        elif not caption:
            skipped.append((line, "empty caption"))
        elif Path(name).is_absolute() or ".." in Path(name).parts:
            skipped.append((line, "image path outside the images folder"))
        else:
            captions_by_photo.setdefault(name, []).append(caption)
            row_lines.setdefault(name, []).append(line)
    names = sorted(captions_by_photo)[:limit]  # limit None: all of them

    # Decode in a small pool (PIL releases the GIL) while the encoder runs on the previous batch.
    spec = encoders.manifest.image
    gallery: list[str] = []
    image_vectors: list[npt.NDArray[np.float32]] = []

    def load(name: str) -> npt.NDArray[np.float32] | str:
        path = images_dir / name
        if not path.is_file():
            return "photo not found"
        try:
            return load_model_input(path, spec)
        except ImageDecodeError as exc:
            log.warning("skipping: %s", exc)  # the message names the file
            return "unreadable photo"

    bar = tqdm(total=len(names), desc="photos", unit="photo", disable=not progress)
    with ThreadPoolExecutor(max_workers=2) as pool:
        batch_names: list[str] = []
        batch_pixels: list[npt.NDArray[np.float32]] = []
        for name, result in zip(names, pool.map(load, names)):
            bar.update()
            if isinstance(result, str):
                skipped += [(line, result) for line in row_lines[name]]
                continue
            batch_names.append(name)
            batch_pixels.append(result)
            if len(batch_pixels) == IMAGE_BATCH:
                image_vectors.append(encoders.image.encode(np.stack(batch_pixels)))
                gallery += batch_names
                batch_names, batch_pixels = [], []
        if batch_pixels:
            image_vectors.append(encoders.image.encode(np.stack(batch_pixels)))
            gallery += batch_names
    bar.close()

    texts = [caption for name in gallery for caption in captions_by_photo[name]]
    caption_to_image = np.array([i for i, name in enumerate(gallery) for _ in captions_by_photo[name]], np.int64)
    text_vectors = [encoders.text.encode(texts[i:i + TEXT_BATCH])
                    for i in tqdm(range(0, len(texts), TEXT_BATCH), desc="captions", unit="batch",
                                  disable=not progress)]
    dim = encoders.manifest.embed_dim
    images = np.concatenate(image_vectors) if image_vectors else np.zeros((0, dim), np.float32)
    captions = np.concatenate(text_vectors) if text_vectors else np.zeros((0, dim), np.float32)
    t2i = recall_at_k(captions, images, caption_to_image)
    i2t = image_recall_at_k(captions, images, caption_to_image)

    skipped.sort()
    report = EvalReport(
        model_id=encoders.manifest.model_id,
        photos=len(gallery),
        captions=len(texts),
        recall_at_1=t2i[1], recall_at_5=t2i[5], recall_at_10=t2i[10],
        image_recall_at_1=i2t[1], image_recall_at_5=i2t[5], image_recall_at_10=i2t[10],
        skipped_rows=len(skipped),
        skipped_reasons=dict(Counter(reason for _, reason in skipped)),
        skipped_examples=[f"row {line}: {reason}" for line, reason in skipped[:MAX_EXAMPLES]],
        seconds=round(time.perf_counter() - started, 2),
        images_dir=str(images_dir),
        captions_csv=str(captions_csv),
    )
    log.info("eval %s: R@1 %.4f R@5 %.4f R@10 %.4f over %d photos", report.model_id, report.recall_at_1,
             report.recall_at_5, report.recall_at_10, report.photos)
    return report
