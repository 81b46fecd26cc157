"""Data-set parsers, bad-row accounting, combining sources and the split by photo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipalbum.server.bundle import ImageSpec, TextSpec
from clipalbum.server.preprocess import load_model_input
from clipalbum.training.config import DataCfg, SourceCfg, TextTowerCfg
from clipalbum.training.data import (Augment, Collate, Photo, PhotoCaptionDataset, load_photos, read_caption_csv,
                           read_flickr30k_csv, split_by_photo)
from clipalbum.training.split import split_captions
from clipalbum.training.towers import tokenizer_file


def _photos(album: Path) -> list[Path]:
    return sorted(p for p in album.rglob("*") if p.suffix in (".png", ".jpg"))


@pytest.fixture()
def flat_album(sample_album: Path, tmp_path: Path) -> Path:
    """The sample photos in one folder, plus a file that only pretends to be a photo."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for photo in _photos(sample_album):
        shutil.copy2(photo, flat / photo.name)
    (flat / "broken.jpg").write_bytes(b"this is not a jpeg")
    return flat


class TestFlickr30kCsv:
    def test_reads_pipe_rows_and_counts_each_kind_of_bad_row(self, flat_album: Path) -> None:
        (flat_album / "results.csv").write_text(
            "image_name| comment_number| comment\n"
            "chelsea.png| 0| A cat looks up .\n"
            "chelsea.png| 1| A tabby cat , with green eyes .\n"
            "coffee.png| 0| A cup of coffee .\n"
            "coffee.png| 1|  \n"  # empty caption
            "coffee.png 2 no pipes at all\n"  # malformed (Flickr30K really has one such row)
            "gone.jpg| 0| A photo nobody kept .\n"  # missing photo
            "broken.jpg| 0| A photo that cannot be read .\n",  # unreadable photo
            encoding="utf-8")
        photos, report = load_photos([SourceCfg(format="flickr30k_csv", path=str(flat_album / "results.csv"),
                                                images=str(flat_album))])
        assert {p.path.name: p.captions for p in photos} == {
            "chelsea.png": ("A cat looks up .", "A tabby cat , with green eyes ."),
            "coffee.png": ("A cup of coffee .",),
        }
        reasons = {reason: n for (_, reason), n in report.skipped.items()}
        assert reasons == {"empty caption": 1, "malformed row": 1, "missing photo": 1, "unreadable photo": 1}
        assert "results.csv:6" in report.describe()  # where the missing photo's row is

    def test_spaces_around_pipes_are_not_part_of_names(self, tmp_path: Path) -> None:
        csv_file = tmp_path / "results.csv"
        csv_file.write_text("image_name| comment_number| comment\n1000092795.jpg| 0| Two young guys .\n")
        assert read_flickr30k_csv(csv_file)[0][:2] == ("1000092795.jpg", "Two young guys .")


class TestCaptionCsv:
    def test_flickr8k_captions_txt_with_quoted_and_unquoted_commas(self, tmp_path: Path) -> None:
        path = tmp_path / "captions.txt"
        path.write_text('image,caption\na.jpg,"A dog, a ball and a park ."\nb.jpg,A cat, sleeping .\nc.jpg\n')
        rows = read_caption_csv(path)
        assert [r[:2] for r in rows] == [("a.jpg", "A dog, a ball and a park ."), ("b.jpg", "A cat, sleeping ."),
                                         ("", "")]

    def test_real_flickr8k_dev_parses_without_bad_rows(self, flickr8k_dev: Path) -> None:
        photos, report = load_photos([SourceCfg(format="csv", path=str(flickr8k_dev / "captions.csv"))],
                                     verify_images=False)
        assert len(photos) == 796 and sum(len(p.captions) for p in photos) == 3980
        assert report.total_skipped() == 0


class TestOtherLayouts:
    def test_karpathy_json_filters_by_split(self, flat_album: Path) -> None:
        data = {"images": [
            {"filename": "chelsea.png", "split": "train", "sentences": [{"raw": "A cat ."}, {"raw": "A kitten ."}]},
            {"filename": "coffee.png", "split": "val", "sentences": [{"raw": "Coffee ."}]},
            {"filename": "rocket.jpg", "split": "restval", "sentences": [{"tokens": ["a", "rocket"]}]},
        ]}
        (flat_album / "dataset_flickr30k.json").write_text(json.dumps(data))
        source = SourceCfg(format="karpathy_json", path=str(flat_album / "dataset_flickr30k.json"),
                           images=str(flat_album), splits=["train", "restval"])
        photos, _ = load_photos([source])
        assert {p.path.name: p.captions for p in photos} == {"chelsea.png": ("A cat .", "A kitten ."),
                                                             "rocket.jpg": ("a rocket",)}

    def test_sidecar_album_reads_one_caption_per_line(self, sample_album: Path) -> None:
        photos = _photos(sample_album)
        photos[0].with_suffix(".txt").write_text("first caption\n\nsecond caption\n")
        photos[1].with_suffix(".txt").write_text("   \n")  # a caption file with nothing in it
        found, report = load_photos([SourceCfg(format="sidecar", path=str(sample_album))])
        assert [(p.path, p.captions) for p in found] == [(photos[0].resolve(), ("first caption", "second caption"))]
        assert report.total_skipped("empty caption") == 1

    def test_flickr8k_token_format(self, flat_album: Path) -> None:
        (flat_album / "Flickr8k.token.txt").write_text("chelsea.png#0\tA cat .\nchelsea.png#1\tA kitten .\n")
        photos, _ = load_photos([SourceCfg(format="flickr8k_token", path=str(flat_album / "Flickr8k.token.txt"))])
        assert photos[0].captions == ("A cat .", "A kitten .")

    def test_several_sources_combine_into_one_photo_list(self, flat_album: Path) -> None:
        (flat_album / "a.csv").write_text("image,caption\nchelsea.png,a cat\n")
        (flat_album / "b.csv").write_text("image,caption\nchelsea.png,a kitten\ncoffee.png,coffee\n")
        photos, report = load_photos([SourceCfg(format="csv", path=str(flat_album / n)) for n in ("a.csv", "b.csv")])
        assert {p.path.name: p.captions for p in photos} == {"chelsea.png": ("a cat", "a kitten"),
                                                             "coffee.png": ("coffee",)}
        assert sum(report.rows.values()) == 3

    def test_unknown_format_is_refused_by_name(self, tmp_path: Path) -> None:
        (tmp_path / "x.csv").write_text("")
        with pytest.raises(ValueError, match="unknown data format 'coco'"):
            load_photos([SourceCfg(format="coco", path=str(tmp_path / "x.csv"))])


class TestSplit:
    def _photos(self, n: int) -> list[Photo]:
        return [Photo(Path(f"/p/{i:03d}.jpg"), (f"caption {i}", f"other {i}")) for i in range(n)]

    def test_split_is_deterministic_exact_and_independent_of_input_order(self) -> None:
        photos = self._photos(100)
        train_a, held_a = split_by_photo(photos, 0.2, seed=0)
        train_b, held_b = split_by_photo(list(reversed(photos)), 0.2, seed=0)
        assert (train_a, held_a) == (train_b, held_b)
        assert len(held_a) == 20 and len(train_a) == 80
        assert split_by_photo(photos, 0.2, seed=1)[1] != held_a  # the seed matters

    def test_no_photo_and_no_caption_is_on_both_sides(self) -> None:
        train, held = split_by_photo(self._photos(50), 0.3, seed=7)
        assert not {p.path for p in train} & {p.path for p in held}
        assert not {c for p in train for c in p.captions} & {c for p in held for c in p.captions}

    def test_split_command_writes_csvs_that_name_the_original_photos(self, flickr8k_dev: Path, tmp_path: Path) -> None:
        result = split_captions(flickr8k_dev / "captions.csv", tmp_path / "split", heldout=0.2, seed=0)
        assert (result.train_photos, result.heldout_photos) == (637, 159)
        held = read_caption_csv(result.heldout_csv)
        train = read_caption_csv(result.train_csv)
        assert len(held) + len(train) == 3980
        assert not {r[0] for r in held} & {r[0] for r in train}
        assert all((flickr8k_dev / "images" / r[0]).is_file() for r in held[:20])
        assert not list((tmp_path / "split").glob("*.jpg"))  # nothing copied


class TestDatasets:
    def test_validation_pixels_are_the_servers(self, sample_album: Path) -> None:
        spec = ImageSpec(size=64)
        photo = _photos(sample_album)[0]
        dataset = PhotoCaptionDataset([Photo(photo, ("a caption",))], spec)
        pixels, caption = dataset[0]
        np.testing.assert_array_equal(pixels, load_model_input(photo, spec))
        assert caption == "a caption"

    def test_augmentation_changes_training_pixels_but_keeps_the_shape(self, sample_album: Path) -> None:
        spec = ImageSpec(size=64)
        photo = _photos(sample_album)[0]
        dataset = PhotoCaptionDataset([Photo(photo, ("c",))], spec, Augment(DataCfg(), 64))
        pixels, _ = dataset[0]
        assert pixels.shape == (3, 64, 64)
        assert not np.array_equal(pixels, load_model_input(photo, spec))

    def test_caption_choice_is_seeded_per_epoch(self) -> None:
        photo = Photo(Path("/x.jpg"), tuple(f"c{i}" for i in range(5)))
        dataset = PhotoCaptionDataset([photo] * 20, ImageSpec())
        first = [dataset.caption_for(i) for i in range(20)]
        assert first == [dataset.caption_for(i) for i in range(20)]
        dataset.epoch = 1
        assert first != [dataset.caption_for(i) for i in range(20)]

    def test_collate_drops_unreadable_photos_and_tokenises_like_the_server(self) -> None:
        collate = Collate(tokenizer_file(TextTowerCfg()), TextSpec(max_length=16))
        pixels = np.zeros((3, 8, 8), np.float32)
        batch = collate([(pixels, "A Dog"), None, (pixels, "a cat on a mat")])
        assert batch["pixels"].shape == (2, 3, 8, 8) and int(batch["dropped"]) == 1
        server_ids = collate.tokenize(["A Dog", "a cat on a mat"])["input_ids"]
        np.testing.assert_array_equal(batch["input_ids"].numpy(), server_ids)
        assert collate([(pixels, "alone"), None]) is None  # one pair is not a contrastive batch
