"""The default bundle (bootstrap recipe): complete, verified, reused, agrees with torch, finds real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from clipalbum.server.bundle import read_manifest, verify_bundle
from clipalbum.server.encoders import Encoders, load_encoders
from clipalbum.server.preprocess import load_model_input
from tests.conftest import SAMPLE_PHOTOS, skimage_data_dir

pytest.importorskip("torch", reason="the default bundle is built with clipalbum[export]")

from clipalbum.export import default_bundle as recipe  # noqa: E402
from clipalbum.export.onnx_export import MIN_PARITY_COSINE  # noqa: E402

# Queries a person would type for scikit-image's photos, each expected to rank its photo first.
OBVIOUS = {
    "a cat": "chelsea.png",
    "a cup of coffee": "coffee.png",
    "a motorcycle": "motorcycle_left.png",
    "a rocket on a launch pad": "rocket.jpg",
}


@pytest.fixture(scope="module")
def encoders(default_bundle: Path) -> Encoders:
    return load_encoders(default_bundle)


@pytest.fixture(scope="module")
def sample_vectors(encoders: Encoders) -> tuple[list[str], np.ndarray]:
    names = sorted(SAMPLE_PHOTOS)
    pixels = np.stack([load_model_input(skimage_data_dir() / n, encoders.manifest.image) for n in names])
    return names, encoders.image.encode(pixels)


def test_default_bundle_is_complete_and_verified(default_bundle: Path) -> None:
    manifest = read_manifest(default_bundle)
    verify_bundle(default_bundle, manifest)

    assert manifest.model_id == recipe.MODEL_ID
    assert manifest.embed_dim == 256 and manifest.normalized
    assert set(manifest.sha256) == {"image.onnx", "text.onnx", "tokenizer.json"}
    assert manifest.image.size == 224 and manifest.image.mean == (0.5, 0.5, 0.5)
    expected = {"none": "fp32", "int8": "int8"}
    assert manifest.image.quantization == expected[recipe.IMAGE_QUANTIZATION]
    assert manifest.text.quantization == expected[recipe.TEXT_QUANTIZATION]
    assert manifest.metrics["parity_image_min_cosine"] >= MIN_PARITY_COSINE[manifest.image.quantization]
    assert manifest.metrics["parity_text_min_cosine"] >= MIN_PARITY_COSINE[manifest.text.quantization]


def test_a_valid_bundle_is_reused_not_rebuilt(default_bundle: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in default_bundle.iterdir()}
    assert recipe.build_default_bundle(default_bundle, progress=False) == default_bundle
    assert {p.name: p.stat().st_mtime_ns for p in default_bundle.iterdir()} == before


def test_a_bundle_of_another_recipe_or_corrupt_is_not_reused(tiny_bundle: Path, default_bundle: Path,
                                                             tmp_path: Path) -> None:
    assert recipe.existing_bundle_ok(default_bundle)
    assert not recipe.existing_bundle_ok(tiny_bundle), "a different model id means rebuild"
    assert not recipe.existing_bundle_ok(tmp_path / "nothing-here")

    copy = shutil.copytree(default_bundle, tmp_path / "copy")
    with (copy / "tokenizer.json").open("ab") as f:
        f.write(b" ")
    assert not recipe.existing_bundle_ok(copy), "a checksum mismatch means rebuild"


def test_embeddings_are_batched_and_normalised(encoders: Encoders, sample_vectors: tuple[list[str], np.ndarray]) -> None:
    names, images = sample_vectors
    texts = encoders.text.encode(["a cat", "a dog running on a beach with a ball"])
    assert images.shape == (len(names), 256) and texts.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("query", sorted(OBVIOUS))
def test_an_obvious_query_ranks_its_photo_first(query: str, encoders: Encoders,
                                                sample_vectors: tuple[list[str], np.ndarray]) -> None:
    names, images = sample_vectors
    scores = images @ encoders.text.encode([query])[0]
    ranked = [names[i] for i in np.argsort(-scores)]
    assert ranked[0] == OBVIOUS[query], f"{query!r} ranked {ranked}"


def test_every_sample_description_finds_its_photo_in_the_top_two(
        encoders: Encoders, sample_vectors: tuple[list[str], np.ndarray]) -> None:
    names, images = sample_vectors
    scores = encoders.text.encode([SAMPLE_PHOTOS[n] for n in names]) @ images.T  # (8, 8)
    misses = [n for i, n in enumerate(names) if i not in np.argsort(-scores[i])[:2]]
    assert not misses


@pytest.mark.slow
def test_onnx_bundle_agrees_with_the_torch_model(default_bundle: Path, encoders: Encoders,
                                                 sample_vectors: tuple[list[str], np.ndarray]) -> None:
    import torch

    from clipalbum.server.textprep import TextTokenizer
    from clipalbum.training.bootstrap import build_bootstrap_model

    names, onnx_images = sample_vectors
    manifest = read_manifest(default_bundle)
    model = build_bootstrap_model()
    pixels = np.stack([load_model_input(skimage_data_dir() / n, manifest.image) for n in names])
    texts = list(SAMPLE_PHOTOS.values()) + ["two dogs play in the snow", "a girl in a pink dress climbs stairs"]
    tokens = TextTokenizer(default_bundle / manifest.text.tokenizer, manifest.text)(texts)
    with torch.inference_mode():
        torch_images = model.encode_image(torch.from_numpy(pixels)).numpy()
        torch_texts = model.encode_text(torch.from_numpy(tokens["input_ids"]),
                                        torch.from_numpy(tokens["attention_mask"])).numpy()
    onnx_texts = encoders.text.encode(texts)

    image_cos = (torch_images * onnx_images).sum(axis=1)
    text_cos = (torch_texts * onnx_texts).sum(axis=1)
    assert image_cos.min() >= MIN_PARITY_COSINE[manifest.image.quantization], image_cos
    assert text_cos.min() >= MIN_PARITY_COSINE[manifest.text.quantization], text_cos


@pytest.mark.slow
def test_flickr8k_dev_recall_meets_the_bar(default_bundle: Path, flickr8k_dev: Path) -> None:
    from clipalbum.server.evaluate import evaluate_bundle

    report = evaluate_bundle(default_bundle, flickr8k_dev / "images", flickr8k_dev / "captions.csv", progress=False)

    assert report.photos == 796 and report.skipped_rows == 0
    assert report.recall_at_10 >= 0.20, report.describe()


def test_class_kinds_line_up_with_timms_class_names() -> None:
    from clipalbum.training.bootstrap_labels import imagenet_classes

    classes = imagenet_classes()
    assert len(classes) == 1000 and all(c.definition for c in classes)
    anchors = {7: ("cock", "bird"), 100: ("black swan", "bird"), 151: ("Chihuahua", "dog"),
               207: ("golden retriever", "dog"), 268: ("Mexican hairless", "dog"), 281: ("tabby", "cat"),
               285: ("Egyptian cat", "cat"), 339: ("sorrel", "horse"), 386: ("African elephant", "elephant"),
               150: ("sea lion", "sea animal"), 269: ("timber wolf", "wild dog"), 398: ("abacus", None)}
    for index, (name, kind) in anchors.items():
        assert (classes[index].name, classes[index].kind) == (name, kind)
