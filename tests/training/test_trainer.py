"""The trainer end to end on a tiny model: logs, checkpoints, resume after a crash, export and eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clipalbum.export.cli import main as export_main
from clipalbum.server.cli import main as clipalbum
from clipalbum.server.encoders import load_encoders
from tests.training.conftest import TINY, tiny_config
from clipalbum.training import trainer as trainer_module
from clipalbum.training.trainer import Trainer, lr_multiplier, pick_device


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


class TestSchedule:
    def test_warmup_then_cosine_to_the_floor(self) -> None:
        values = [lr_multiplier(s, total=100, warmup=10, min_ratio=0.1) for s in range(100)]
        assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
        assert all(a >= b for a, b in zip(values[10:], values[11:]))
        assert values[-1] == pytest.approx(0.1, abs=1e-3)
        assert lr_multiplier(55, 100, 10, 0.0) == pytest.approx(0.5)

    def test_device_auto_falls_back_to_cpu_and_names_are_honoured(self) -> None:
        expected = "cuda" if torch.cuda.is_available() else "cpu"
        if not torch.cuda.is_available() and torch.backends.mps.is_available():
            expected = "mps"
        assert pick_device("auto").type == expected
        assert pick_device("cpu") == torch.device("cpu")


class TestTraining:
    def test_cli_trains_logs_and_writes_checkpoints(self, captioned_album: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
        run = tmp_path / "run"
        source = json.dumps(str(captioned_album / "captions.csv"))
        # Through the `clipalbum` command, which hands `train ...` to training.cli.
        code = clipalbum(["train", str(TINY), "--out", str(run), "-q",
                          "--set", f"data.sources=[{{format=\"csv\", path={source}, images=\"{captioned_album}\"}}]"])
        assert code == 0
        assert "best checkpoint" in capsys.readouterr().out
        events = _events(run)
        kinds = [e["event"] for e in events]
        assert kinds[0] == "data" and kinds[1] == "start" and kinds[-1] == "done"
        epochs = [e for e in events if e["event"] == "epoch"]
        assert len(epochs) == 2 and set(epochs[0]["val"]) >= {"t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r10"}
        assert [e for e in events if e["event"] == "step"][0]["lr"].keys() == {"image", "text", "heads"}
        for name in ("best", "last"):
            meta = json.loads((run / name / "checkpoint.json").read_text())
            assert meta["config"]["name"] == "tiny-cpu" and meta["text_hf_config"]["vocab_size"] == 30522
            assert (run / name / "model.safetensors").is_file() and (run / name / "tokenizer.json").is_file()
        train_rows = (run / "split" / "train.csv").read_text().splitlines()[1:]
        val_rows = (run / "split" / "val.csv").read_text().splitlines()[1:]
        assert len(val_rows) == 2 * 3 and len(train_rows) == 6 * 3  # 2 of 8 photos validate, 3 captions each
        assert not {r.split(",")[0] for r in train_rows} & {r.split(",")[0] for r in val_rows}

    def test_a_crashed_run_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(
            self, captioned_album: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        settings = ("data.batch_size=2", "train.checkpoint_every=1", "train.epochs=2")
        whole = Trainer(tiny_config(tmp_path / "whole", captioned_album, *settings), progress=False).fit()

        calls = {"n": 0}
        real_collate = trainer_module.Collate

        class CrashingCollate(real_collate):
            def __call__(self, items):
                calls["n"] += 1
                if calls["n"] == 5:  # the second batch of the second epoch
                    raise RuntimeError("simulated crash")
                return super().__call__(items)

        monkeypatch.setattr(trainer_module, "Collate", CrashingCollate)
        crashed = tiny_config(tmp_path / "crashed", captioned_album, *settings)
        with pytest.raises(RuntimeError, match="simulated crash"):
            Trainer(crashed, progress=False).fit()
        monkeypatch.setattr(trainer_module, "Collate", real_collate)
        resumed = Trainer(crashed, progress=False).fit()

        resume = [e for e in _events(resumed.run_dir) if e["event"] == "resume"]
        assert resume == [{**resume[0], "epoch": 1, "next_batch": 1, "step": 4}]
        assert resumed.steps == whole.steps == 6
        a = load_file(str(whole.run_dir / "last" / "model.safetensors"))
        b = load_file(str(resumed.run_dir / "last" / "model.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], msg=key)

    def test_running_a_finished_run_again_trains_nothing_more(self, captioned_album: Path, tmp_path: Path) -> None:
        cfg = tiny_config(tmp_path / "run", captioned_album, "train.epochs=1")
        first = Trainer(cfg, progress=False).fit()
        again = Trainer(cfg, progress=False).fit()
        assert again.steps == first.steps and again.best_metrics == first.best_metrics

    def test_bad_rows_are_reported_not_fatal(self, captioned_album: Path, tmp_path: Path) -> None:
        with (captioned_album / "captions.csv").open("a") as f:
            f.write("missing.jpg,a photo that is gone\nchelsea-typo.png,\n")
        result = Trainer(tiny_config(tmp_path / "run", captioned_album, "train.max_steps=1"), progress=False).fit()
        report = json.loads((result.run_dir / "data_report.json").read_text())
        assert {s["reason"]: s["count"] for s in report["skipped"]} == {"missing photo": 1, "empty caption": 1}

    def test_frozen_image_tower_features_are_computed_once_and_match_the_tower(self, captioned_album: Path,
                                                                                tmp_path: Path) -> None:
        cfg = tiny_config(tmp_path / "run", captioned_album, "image.freeze=true", "train.epochs=1")
        trainer = Trainer(cfg, progress=False)
        result = trainer.fit()
        cached = torch.load(result.run_dir / "train_image_features.pt", weights_only=False)
        model, _, _ = trainer_module.load_checkpoint(result.run_dir / "last")
        from clipalbum.training.data import PhotoCaptionDataset
        from clipalbum.training.model import image_spec

        photo = trainer_module.Photo(Path(cached["kept"][0]), ("x",))
        pixels = torch.from_numpy(PhotoCaptionDataset([photo], image_spec(cfg))[0][0])[None]
        with torch.no_grad():
            torch.testing.assert_close(model.image_tower(pixels), cached["features"][:1], atol=1e-4, rtol=1e-4)


class TestExport:
    def test_a_checkpoint_exports_to_a_bundle_that_serves_and_evaluates(self, captioned_album: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
        result = Trainer(tiny_config(tmp_path / "run", captioned_album, "train.epochs=1"), progress=False).fit()
        bundle = tmp_path / "bundle"
        photo = next(captioned_album.rglob("*.png"))
        assert export_main([str(result.run_dir), str(bundle), "-q", "--parity-images", str(photo)]) == 0
        encoders = load_encoders(bundle)
        assert encoders.manifest.embed_dim == 32 and encoders.manifest.image.size == 64
        assert encoders.manifest.model_id.startswith("tiny-cpu-")
        assert encoders.manifest.metrics["parity_image_min_cosine"] > 0.99
        assert "val_t2i_r1" in encoders.manifest.metrics
        vectors = encoders.text.encode(["a cat", "a rocket"])
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

        capsys.readouterr()
        assert clipalbum(["eval", "--model", str(bundle), "--images", str(captioned_album),
                          "--captions", str(captioned_album / "captions.csv"), "--json", "-q"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["photos"] == 8 and report["captions"] == 24 and 0 <= report["recall_at_10"] <= 1

    def test_text_only_int8_quantizes_the_text_tower_alone(self, captioned_album: Path, tmp_path: Path) -> None:
        result = Trainer(tiny_config(tmp_path / "run", captioned_album, "train.max_steps=1"), progress=False).fit()
        bundle = tmp_path / "bundle"
        assert export_main([str(result.run_dir / "last"), str(bundle), "-q", "--quantize", "text-int8"]) == 0
        manifest = load_encoders(bundle).manifest
        assert (manifest.image.quantization, manifest.text.quantization) == ("fp32", "int8")
        assert manifest.model_id.endswith("-text-int8")

    def test_export_refuses_a_folder_that_is_not_a_checkpoint(self, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
        assert export_main([str(tmp_path), str(tmp_path / "bundle")]) == 2
        assert "is not a checkpoint" in capsys.readouterr().err
        assert not (tmp_path / "bundle").exists()
