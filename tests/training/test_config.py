"""Config files and command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipalbum.training.cli import CONFIGS
from clipalbum.training.config import apply_overrides, config_from_dict, load_config, parse_override


class TestOverrides:
    def test_values_are_read_as_toml_and_bare_strings_stay_strings(self) -> None:
        assert parse_override("train.epochs=3") == (["train", "epochs"], 3)
        assert parse_override("image.freeze=true") == (["image", "freeze"], True)
        assert parse_override("optim.text_lr=2e-5") == (["optim", "text_lr"], 2e-5)
        assert parse_override("train.out_dir=/tmp/run one") == (["train", "out_dir"], "/tmp/run one")
        assert parse_override("image.trainable=[\"blocks.6\"]") == (["image", "trainable"], ["blocks.6"])

    def test_an_override_without_equals_is_refused(self) -> None:
        with pytest.raises(ValueError, match="key=value"):
            parse_override("train.epochs")

    def test_overrides_replace_nested_values(self) -> None:
        values = apply_overrides({"train": {"epochs": 5}}, ["train.epochs=1", "head.kind=rms"])
        cfg = config_from_dict(values)
        assert cfg.train.epochs == 1 and cfg.head.kind == "rms"

    def test_unknown_keys_name_the_section(self) -> None:
        with pytest.raises(ValueError, match=r"unknown config key\(s\) \['epochz'\] in \[train\]"):
            config_from_dict({"train": {"epochz": 1}})


class TestShippedConfigs:
    @pytest.mark.parametrize("name", ["resnet50-distilbert", "offline-effnetlite0-minilm", "tiny-cpu"])
    def test_each_shipped_config_loads(self, name: str) -> None:
        cfg = load_config(CONFIGS / f"{name}.toml")
        assert cfg.name == name

    def test_the_specified_model_is_what_the_issue_asks_for(self) -> None:
        cfg = load_config(CONFIGS / "resnet50-distilbert.toml")
        assert (cfg.image.name, cfg.image.size, cfg.text.kind, cfg.text.max_length) == ("resnet50", 256, "distilbert", 200)
        assert (cfg.head.dim, cfg.head.dropout, cfg.loss.temperature) == (256, 0.1, 1.0)
        assert (cfg.optim.image_lr, cfg.optim.text_lr, cfg.optim.head_lr, cfg.optim.weight_decay) == (1e-4, 1e-5, 1e-3, 1e-3)
        assert cfg.image.pretrained == "none" and cfg.text.pretrained == "none"  # no hub unless asked

    def test_relative_data_paths_resolve_against_the_working_directory(self, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        cfg = load_config(CONFIGS / "resnet50-distilbert.toml")
        assert cfg.data.sources[0].path == str(tmp_path / "data" / "flickr30k" / "results.csv")
