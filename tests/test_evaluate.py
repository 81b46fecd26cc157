"""Recall@K and `clipalbum eval`: exact metrics on hand-made vectors, bad rows counted, not fatal."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipalbum.server.cli import main as cli_main
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.evaluate import EvalReport, evaluate_bundle, image_recall_at_k, recall_at_k
from tests.conftest import SAMPLE_PHOTOS, skimage_data_dir


def _unit(rows: list[list[float]]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_recall_at_k_counts_the_rank_of_each_captions_own_image() -> None:
    images = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    texts = _unit([
        [1, 0.1, 0],  # image 0 first -> rank 0
        [1, 0.5, 0],  # its image 1 is second -> rank 1
        [1, 0.5, 0.2],  # its image 2 is third -> rank 2
        [0, 0, 1],  # image 2 first -> rank 0
    ])
    owner = np.array([0, 1, 2, 2])

    recall = recall_at_k(texts, images, owner, ks=(1, 2, 3))

    assert recall == {1: 0.5, 2: 0.75, 3: 1.0}


def test_recall_at_k_of_an_empty_query_set_is_zero() -> None:
    assert recall_at_k(np.zeros((0, 3), np.float32), _unit([[1, 0, 0]]), np.zeros(0, np.int64)) == {1: 0.0, 5: 0.0, 10: 0.0}


def test_image_recall_needs_any_one_of_the_images_captions() -> None:
    images = _unit([[1, 0], [0, 1]])
    texts = _unit([[0.2, 1], [1, 0.1], [0.9, 1]])  # image 0 owns captions 0 and 1, image 1 owns caption 2
    owner = np.array([0, 0, 1])

    # image 0: caption 1 is its best match (rank 0); image 1: caption 0 beats its own caption 2 (rank 1).
    assert image_recall_at_k(texts, images, owner, ks=(1, 2)) == {1: 0.5, 2: 1.0}


def _chance_of_one_in_top_k(k: int, gallery: int, own: int) -> float:
    """P(at least one of `own` items lands in the top k of `gallery`) under a uniformly random order."""
    return 1 - math.comb(gallery - own, k) / math.comb(gallery, k)


@pytest.mark.parametrize("vectors", ["constant", "zero", "nan"])
def test_collapsed_vectors_score_chance_not_perfect(vectors: str) -> None:
    # A collapsed model gives every photo and caption the same vector: every score ties (or is NaN).
    photos, per_photo, dim = 20, 3, 8
    fill = {"constant": 0.5, "zero": 0.0, "nan": np.nan}[vectors]
    images = np.full((photos, dim), fill, np.float32)
    texts = np.full((photos * per_photo, dim), fill, np.float32)
    owner = np.repeat(np.arange(photos), per_photo)
    ks = (1, 5, 10)

    t2i = recall_at_k(texts, images, owner, ks)
    i2t = image_recall_at_k(texts, images, owner, ks)

    if vectors == "nan":  # no score at all: nothing is retrieved
        assert t2i == {k: 0.0 for k in ks} and i2t == {k: 0.0 for k in ks}
        return
    assert t2i == pytest.approx({k: k / photos for k in ks})
    assert i2t == pytest.approx({k: _chance_of_one_in_top_k(k, photos * per_photo, per_photo) for k in ks})


def test_ties_are_broken_by_expected_value_under_a_random_order() -> None:
    images = _unit([[1, 0], [1, 0], [1, 0], [0, 1]])  # images 0-2 tie for any query
    texts = _unit([[1, 0.1], [0, 1]])  # caption 0 belongs to image 1, caption 1 to image 3
    owner = np.array([1, 3])

    # caption 0: its image ties with two others at the top: rank 0, 1 or 2 with equal chance.
    assert recall_at_k(texts, images, owner, ks=(1, 2, 3)) == pytest.approx({1: (1 / 3 + 1) / 2,
                                                                            2: (2 / 3 + 1) / 2, 3: 1.0})


def test_an_image_with_several_tied_captions_counts_the_chance_that_any_is_in_the_top_k() -> None:
    images = _unit([[1, 0], [0, 1]])
    # Image 0 owns captions 0 and 1; caption 2 (image 1's) scores the same for image 0: three-way tie.
    texts = _unit([[1, 1], [1, 1], [1, 1]])
    owner = np.array([0, 0, 1])

    recall = image_recall_at_k(texts, images, owner, ks=(1, 2))

    # k=1: image 0 wins with 2/3, image 1 with 1/3; k=2: image 0 always, image 1 with 2/3.
    assert recall == pytest.approx({1: (2 / 3 + 1 / 3) / 2, 2: (1 + 2 / 3) / 2})


def test_the_trainer_metric_ranks_a_collapsed_model_below_a_working_one() -> None:
    # The trainer keeps the checkpoint with the highest mean recall: a collapsed model must not win.
    from clipalbum.training.metrics import retrieval_recalls

    rng = np.random.default_rng(0)
    photos, per_photo, dim = 50, 2, 16
    images = rng.normal(size=(photos, dim)).astype(np.float32)
    owner = np.repeat(np.arange(photos), per_photo)
    texts = images[owner] + rng.normal(scale=1.5, size=(photos * per_photo, dim)).astype(np.float32)
    working = retrieval_recalls(_unit(images.tolist()), _unit(texts.tolist()), owner)
    collapsed = retrieval_recalls(np.ones_like(images), np.ones_like(texts), owner)

    assert collapsed["t2i_r1"] == pytest.approx(100 / photos)
    assert 0 < collapsed["mean_recall"] < working["mean_recall"] < 100


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    import csv

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    return path


@pytest.fixture()
def photo_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in SAMPLE_PHOTOS:
        shutil.copy2(skimage_data_dir() / name, folder / name)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    return folder


def test_evaluate_counts_bad_rows_and_scores_the_rest(tiny_bundle: Path, photo_folder: Path, tmp_path: Path) -> None:
    rows = [(name, caption) for name, caption in SAMPLE_PHOTOS.items()]
    rows += [
        ("chelsea.png", "a tabby cat"),  # a second caption for one photo
        ("missing.jpg", "a photo that is not there"),
        ("empty.jpg", "a zero-byte file"),
        ("notes.png", "a text file named like a photo"),
        ("coffee.png", "   "),
        ("", "no image named"),
        ("../photos/coffee.png", "a path that leaves the folder"),
    ]
    csv_path = _write_csv(tmp_path / "captions.csv", rows)

    report = evaluate_bundle(tiny_bundle, photo_folder, csv_path, progress=False)

    assert isinstance(report, EvalReport)
    assert report.model_id == "tiny-test"
    assert report.photos == len(SAMPLE_PHOTOS)
    assert report.captions == len(SAMPLE_PHOTOS) + 1
    assert report.skipped_rows == 6
    assert report.skipped_reasons == {
        "photo not found": 1,
        "unreadable photo": 2,
        "empty caption": 1,
        "no image name": 1,
        "image path outside the images folder": 1,
    }
    assert report.skipped_examples[0].startswith("row ")
    for value in (report.recall_at_1, report.recall_at_5, report.recall_at_10, report.image_recall_at_10):
        assert 0.0 <= value <= 1.0
    assert report.recall_at_1 <= report.recall_at_5 <= report.recall_at_10
    assert report.recall_at_10 == 1.0, "with 8 photos every caption's photo is in the top 10"
    text = report.describe()
    assert "Recall@10" in text and "skipped 6 rows" in text and "unreadable photo" in text


def test_evaluate_limit_keeps_the_first_photos_by_name(tiny_bundle: Path, photo_folder: Path, tmp_path: Path) -> None:
    csv_path = _write_csv(tmp_path / "captions.csv", list(SAMPLE_PHOTOS.items()))

    report = evaluate_bundle(tiny_bundle, photo_folder, csv_path, progress=False, limit=3)

    assert report.photos == 3 and report.captions == 3 and report.skipped_rows == 0


def test_a_csv_without_the_columns_is_refused(tiny_bundle: Path, photo_folder: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,text\nchelsea.png,a cat\n")
    with pytest.raises(ClipalbumError, match="image,caption"):
        evaluate_bundle(tiny_bundle, photo_folder, bad, progress=False)


def test_cli_eval_prints_json(tiny_bundle: Path, photo_folder: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = _write_csv(tmp_path / "captions.csv", list(SAMPLE_PHOTOS.items()))

    code = cli_main(["eval", "--model", str(tiny_bundle), "--images", str(photo_folder), "--captions", str(csv_path),
                     "--json", "-q"])

    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["photos"] == len(SAMPLE_PHOTOS) and set(printed) >= {"recall_at_1", "recall_at_5", "recall_at_10"}


def test_cli_eval_against_shows_both_bundles_side_by_side(tiny_bundle: Path, photo_folder: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from tests.tinybundle import make_tiny_bundle

    other = make_tiny_bundle(tmp_path / "other", dim=8, model_id="tiny-other")
    csv_path = _write_csv(tmp_path / "captions.csv", list(SAMPLE_PHOTOS.items()))
    base = ["eval", "--model", str(tiny_bundle), "--images", str(photo_folder), "--captions", str(csv_path), "-q"]
    assert cli_main([*base, "--against", str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{len(SAMPLE_PHOTOS)} photos, {len(SAMPLE_PHOTOS)} captions"
    assert lines[2].startswith("tiny-test") and lines[3].startswith("tiny-other")
    assert lines[4].startswith("difference (points)") and lines[4].count("+") + lines[4].count("-") == 6
    assert cli_main([*base, "--against", str(other), "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert (both["model"]["model_id"], both["against"]["model_id"]) == ("tiny-test", "tiny-other")
    alone = evaluate_bundle(tiny_bundle, photo_folder, csv_path, progress=False)
    assert both["model"]["recall_at_10"] == alone.recall_at_10
