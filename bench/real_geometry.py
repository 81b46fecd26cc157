"""Vectors with the real model's geometry for the search benchmarks, and a generator that extends them to 1M.

Real part: every photo the development data holds (flickr8k-dev, enhance-dev, scikit-image's samples), each
embedded by the bundle's image encoder as it is and in several views (a mirror image, crops, a small
rotation, a colour change, grey, a downscale), as an album holds bursts and edits of one scene; and
flickr8k-dev's captions embedded by the text encoder, the queries. Cached under .cache/bench-vectors.

Extension (`extend`): a new vector is a point on the segment between a real view and one of its nearest
real neighbours, plus noise of the size of that neighbourhood, normalised. `python bench/real_geometry.py
--check` compares the generated set with the real one at equal size (score distributions of the exact top
20 for caption queries, the image-text gap, and how many of the true top 20 an HNSW graph and the server's
inverted lists find) and prints JSON; the README quotes it.

    .venv/bin/python bench/real_geometry.py [--model BUNDLE] [--check]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageEnhance, ImageOps

from serving import REPO, resolve_model

SHARED = REPO.parent / "shared" / "data"
FLICKR = SHARED / "flickr8k-dev"
ENHANCE_DEV = SHARED / "enhance-dev"
CACHE = REPO / ".cache" / "bench-vectors"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
NEIGHBOURS = 8  # the extension moves towards one of these nearest real vectors


def source_photos() -> list[Path]:
    """The real photos at hand: research data read in place (never copied), then scikit-image's samples."""
    photos: list[Path] = []
    for folder in (FLICKR / "images", ENHANCE_DEV):
        if folder.is_dir():
            photos += sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    from clipalbum.server.demo import skimage_data_dir
    from clipalbum.server.errors import ClipalbumError

    try:
        photos += sorted(p for p in skimage_data_dir().iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    except ClipalbumError:
        pass
    return photos


def views(img: Image.Image, rng: np.random.Generator) -> list[Image.Image]:
    """The photo and seven edits of it, as an album's bursts, crops and re-edits of one shot."""
    w, h = img.size

    def crop(share: float) -> Image.Image:
        cw, ch = max(8, int(w * share)), max(8, int(h * share))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((left, top, left + cw, top + ch))

    return [
        img,
        ImageOps.mirror(img),
        crop(0.8),
        crop(0.6),
        img.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR, expand=False),
        ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.7, 1.3))))
        .enhance(float(rng.uniform(0.5, 1.5))),
        ImageOps.grayscale(img).convert("RGB"),
        img.resize((max(8, w // 4), max(8, h // 4))).resize((w, h)),
    ]


def captions() -> list[tuple[str, str]]:
    """(image file name, caption) rows of flickr8k-dev; empty when the folder is absent."""
    path = FLICKR / "captions.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [(row["image"], row["caption"].strip()) for row in csv.DictReader(f) if row.get("caption")]


def real_vectors(bundle: Path) -> dict[str, npt.NDArray]:
    """images (N, D) float32, image_photo (N,) source-photo index, texts (M, D), text_photo (M,) the photo a
    caption describes (-1 when not among the photos); cached per model id."""
    from clipalbum.server.bundle import read_manifest
    from clipalbum.server.encoders import load_encoders
    from clipalbum.server.preprocess import open_photo, to_model_input

    manifest = read_manifest(bundle)
    cached = CACHE / f"{manifest.model_id}.npz"
    if cached.is_file():
        return dict(np.load(cached))
    photos = source_photos()
    if not (FLICKR / "images").is_dir():
        raise SystemExit(f"real-geometry vectors need {FLICKR} (research data, read in place); it is absent")
    encoders = load_encoders(bundle)
    rng = np.random.default_rng(0)
    images, image_photo = [], []
    started = time.monotonic()
    for i, path in enumerate(photos):
        try:
            img = open_photo(path).convert("RGB")
        except Exception as exc:  # a damaged sample is skipped, not fatal
            print(f"skipped {path}: {exc}", file=sys.stderr)
            continue
        img.thumbnail((768, 768))
        pixels = np.stack([to_model_input(v, manifest.image) for v in views(img, rng)])
        images.append(encoders.image.encode(pixels))
        image_photo += [i] * len(pixels)
        if i % 50 == 0:
            rate = (i + 1) / (time.monotonic() - started)
            print(f"\r{i + 1}/{len(photos)} photos ({rate:.1f}/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    index_of = {p.name: i for i, p in enumerate(photos) if p.is_relative_to(FLICKR)}
    rows = captions()
    texts = np.concatenate([encoders.text.encode([c for _, c in rows[s:s + 64]]) for s in range(0, len(rows), 64)])
    result = {"images": np.concatenate(images).astype(np.float32), "image_photo": np.asarray(image_photo),
              "texts": texts.astype(np.float32),
              "text_photo": np.asarray([index_of.get(name, -1) for name, _ in rows])}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cached, **result)
    return result


def exact_top(gallery: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int) -> npt.NDArray:
    """Row indices of each query's `k` most similar gallery vectors, best first, in blocks of 64 queries."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), 64):
        scores = queries[s:s + 64] @ gallery.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[s:s + 64] = np.take_along_axis(part, order, axis=1)
    return out


def rerank(gallery: npt.NDArray[np.float32], query: npt.NDArray[np.float32], candidates: npt.NDArray,
           k: int) -> npt.NDArray:
    """The `k` best of `candidates` (gallery rows) by exact float32 score, as the server re-ranks them."""
    candidates = candidates[candidates < len(gallery)]
    scores = gallery[candidates] @ query
    return candidates[np.argsort(-scores)[:k]]


def overlap(found: npt.NDArray, truth: npt.NDArray, k: int) -> float:
    """recall@k: the share of the true top k that `found` holds."""
    return len(set(found.tolist()) & set(truth.tolist())) / k


def _normalize(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def extend(real: npt.NDArray[np.float32], count: int, seed: int = 0, chunk: int = 100_000, noise: float = 0.5
           ) -> Iterator[npt.NDArray[np.float32]]:
    """Yields `count` unit vectors in chunks: each on the way from a real vector to one of its NEIGHBOURS
    nearest real vectors, plus Gaussian noise of `noise` times the spread of that neighbourhood (a larger
    `noise` spreads the new photos further from the real ones). The first len(real) vectors are the real
    ones themselves."""
    rng = np.random.default_rng(seed)
    near = np.empty((len(real), NEIGHBOURS), dtype=np.int64)
    for s in range(0, len(real), 1024):  # blocks: the whole similarity matrix of 11k views is 0.5 GB
        sims = real[s:s + 1024] @ real.T
        sims[np.arange(len(sims)), np.arange(s, s + len(sims))] = -2  # not its own neighbour
        near[s:s + 1024] = np.argpartition(-sims, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
    # per-dimension spread of a vector's neighbourhood, averaged: the noise a new shot of that scene gets
    spread = np.sqrt(((real[near] - real[:, None, :]) ** 2).mean(axis=(1, 2)))
    done = 0
    if count >= len(real):
        yield real.astype(np.float32)
        done = len(real)
    while done < count:
        n = min(chunk, count - done)
        base = rng.integers(0, len(real), n)
        other = near[base, rng.integers(0, NEIGHBOURS, n)]
        t = rng.uniform(0, 1, (n, 1)).astype(np.float32)
        jitter = rng.standard_normal((n, real.shape[1])).astype(np.float32) * (noise * spread[base, None])
        yield _normalize(real[base] + t * (real[other] - real[base]) + jitter)
        done += n


def extended(real: npt.NDArray[np.float32], count: int, seed: int = 0, noise: float = 0.5
             ) -> npt.NDArray[np.float32]:
    return np.concatenate(list(extend(real, count, seed, noise=noise)))[:count]


def _top_scores(gallery: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int) -> npt.NDArray:
    scores = queries @ gallery.T
    return -np.sort(-np.partition(scores, scores.shape[1] - k, axis=1)[:, -k:], axis=1)


def _hnsw_recall(gallery: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int,
                 expansion: int) -> float:
    from usearch.index import Index

    index = Index(ndim=gallery.shape[1], metric="cos", dtype="f16", connectivity=16, expansion_add=128,
                  expansion_search=expansion)
    index.add(np.arange(len(gallery), dtype=np.uint64), gallery, threads=0)
    found = index.search(queries, k, threads=0).keys
    truth = exact_top(gallery, queries, k)
    return round(float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, truth)])), 4)


def _lists_recall(gallery: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int,
                  probes: tuple[int, ...]) -> dict[str, float]:
    """recall@k of text queries through the server's inverted lists (server/ann.py), with lists as full as
    at a million photos (~244 photos each), after the server's re-rank of 30 candidates."""
    from clipalbum.server import ann as ann_module
    from clipalbum.server.clustering import train_centroids

    lists = max(2, round(len(gallery) / 244))
    sample = gallery[np.random.default_rng(0).choice(len(gallery), min(len(gallery), lists * 50), replace=False)]
    index = ann_module.AnnIndex(gallery.shape[1], train_centroids(sample, lists))
    index.add(np.arange(len(gallery), dtype=np.uint64), gallery)
    truth = exact_top(gallery, queries, k)
    exact_limit, ann_module.EXACT_SEARCH_MAX = ann_module.EXACT_SEARCH_MAX, 0  # search the lists at this size
    try:
        result = {}
        for p in probes:
            index.probes = p
            found = []
            for q, t in zip(queries, truth):
                found.append(overlap(rerank(gallery, q, np.asarray(index.search(q, 30)[0], dtype=np.int64), k), t, k))
            result[f"{p} of {lists}"] = round(float(np.mean(found)), 4)
        return result
    finally:
        ann_module.EXACT_SEARCH_MAX = exact_limit


def describe(gallery: npt.NDArray[np.float32], texts: npt.NDArray[np.float32], k: int = 20) -> dict[str, object]:
    """What the search sees of a gallery: exact top-k scores of text and image queries, the gap between the
    text and image means, HNSW recall@k for text queries at two expansions, and the server's inverted lists'
    recall@k at a few probes."""
    rng = np.random.default_rng(1)
    text_q = texts[rng.choice(len(texts), min(500, len(texts)), replace=False)]
    image_q = gallery[rng.choice(len(gallery), 500, replace=False)]
    top_t, top_i = _top_scores(gallery, text_q, k), _top_scores(gallery, image_q, k + 1)[:, 1:]
    pairs = rng.integers(0, len(gallery), (20_000, 2))
    random_cos = np.einsum("ij,ij->i", gallery[pairs[:, 0]], gallery[pairs[:, 1]])
    mean_image, mean_text = gallery.mean(0), texts.mean(0)
    return {
        "photos": len(gallery),
        "text_query_top1": round(float(top_t[:, 0].mean()), 4),
        "text_query_top20": round(float(top_t[:, -1].mean()), 4),
        "text_query_top1_minus_top20": round(float((top_t[:, 0] - top_t[:, -1]).mean()), 4),
        "image_query_top1_other": round(float(top_i[:, 0].mean()), 4),
        "image_query_top20": round(float(top_i[:, -1].mean()), 4),
        "random_pair_cos_mean": round(float(random_cos.mean()), 4),
        "random_pair_cos_std": round(float(random_cos.std()), 4),
        "image_mean_norm": round(float(np.linalg.norm(mean_image)), 4),
        "gap_cos_between_means": round(float(mean_image @ mean_text / np.linalg.norm(mean_image)
                                             / np.linalg.norm(mean_text)), 4),
        "hnsw_text_recall_at_20": {str(e): _hnsw_recall(gallery, text_q, k, e) for e in (16, 64)},
        "lists_text_recall_at_20": _lists_recall(gallery, text_q, k, (1, 2, 4)),
    }


def check(bundle: Path) -> dict[str, object]:
    """Real vectors against generated ones of the same count (grown from half the photos, compared with the
    other half's real vectors, so the generator cannot just copy them), and against the bench's old
    clustered synthetic vectors."""
    from serving import synthetic_vectors

    data = real_vectors(bundle)
    images, photo = data["images"], data["image_photo"]
    held_out = photo % 2 == 1
    real_half, seed_half = images[held_out], images[~held_out]
    generated = extended(seed_half, 2 * len(seed_half), seed=0)[len(seed_half):][:len(real_half)]
    rng = np.random.default_rng(0)
    dim = images.shape[1]
    centres = synthetic_vectors(rng, max(1, len(real_half) // 25), dim, None)
    clustered = synthetic_vectors(rng, len(real_half), dim, centres)
    return {"bench": "real_geometry", "real_views": len(images), "photos": int(np.unique(photo).size),
            "captions": len(data["texts"]),
            "real": describe(real_half, data["texts"]), "generated": describe(generated, data["texts"]),
            "old_clustered_synthetic": describe(clustered, data["texts"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="bundle directory (default: the cached default bundle)")
    parser.add_argument("--check", action="store_true", help="compare generated vectors with real ones")
    args = parser.parse_args()
    bundle = resolve_model(args.model)
    if args.check:
        print(json.dumps(check(bundle), indent=2))
    else:
        data = real_vectors(bundle)
        print(json.dumps({k: list(v.shape) for k, v in data.items()}))


if __name__ == "__main__":
    main()
