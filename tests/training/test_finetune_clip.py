"""Fine-tuning a pretrained CLIP (`clip.source`): small random transformers CLIP and SigLIP checkpoints built
here stand in for real ones. The fine-tuned bundle keeps the original's preprocessing and tokenizer, and
`clipalbum eval --against` measures it beside the imported original on the same photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipalbum.export.cli import main as export_main
from clipalbum.server.bundle import read_manifest
from clipalbum.server.cli import main as clipalbum
from clipalbum.training.clip_towers import load_clip_source
from clipalbum.training.model import build_model, param_groups
from clipalbum.training.trainer import Trainer, load_checkpoint
from tests.test_model_import import open_clip_arch, tiny_clip, tiny_siglip  # noqa: F401 (a fixture)
from tests.training.conftest import tiny_config

FINETUNE = ["head.kind=\"identity\"", "loss.normalize=true", "loss.temperature=0.05", "optim.image_lr=1e-3",
            "optim.text_lr=1e-3", "train.epochs=3", "data.val_fraction=0.25"]


def clip_source(family: str, folder: Path, request: pytest.FixtureRequest) -> tuple[str, str]:
    """(clip.source, clip.weights) of a small random model of `family`."""
    if family == "clip":
        return str(tiny_clip(folder / "tiny-clip", mean=(0.5, 0.4, 0.3))), ""
    if family == "siglip":
        return str(tiny_siglip(folder / "tiny-siglip")), ""
    import open_clip

    arch = request.getfixturevalue("open_clip_arch")
    torch.manual_seed(1)
    weights = folder / "tiny.pt"
    torch.save(open_clip.create_model(arch, pretrained=None).state_dict(), weights)
    return f"open_clip:{arch}", str(weights)


@pytest.mark.parametrize("family", ["clip", "siglip", "open_clip"])
def test_a_fine_tuned_clip_keeps_its_preprocessing_and_is_measured_against_its_start(
        family: str, captioned_album: Path, tmp_path: Path, request: pytest.FixtureRequest,
        capsys: pytest.CaptureFixture[str]) -> None:
    source, weights = clip_source(family, tmp_path, request)
    assert clipalbum(["model", "import", source, *(["--pretrained", weights] if weights else []),
                      "--out", str(tmp_path / "imported"), "-q"]) == 0
    imported = read_manifest(tmp_path / "imported")

    cfg = tiny_config(tmp_path / "run", captioned_album, f"clip.source={json.dumps(source)}",
                      f"clip.weights={json.dumps(weights)}", *FINETUNE)
    trainer = Trainer(cfg, progress=False)
    result = trainer.fit()
    assert result.run_dir == tmp_path / "run"

    # The towers keep separate parameters: each learning rate reaches its own side only.
    model = build_model(cfg, clip=trainer.clip)
    groups = {g["name"]: {id(p) for p in g["params"]} for g in param_groups(model, cfg)}
    assert groups["image"] and groups["text"] and not groups["image"] & groups["text"]

    # The checkpoint rebuilds offline from the source and its weights moved away from the original's.
    tuned, _, meta = load_checkpoint(result.run_dir / "last")
    original = build_model(cfg, clip=load_clip_source(cfg.clip, tmp_path / "fresh"))  # as it was before
    moved = [not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), original.state_dict().values())]
    assert any(moved) and meta["served_specs"]["text"]["pad_id"] == imported.text.pad_id

    assert export_main([str(result.run_dir), str(tmp_path / "tuned"), "-q"]) == 0
    tuned_manifest = read_manifest(tmp_path / "tuned")
    for field in ("size", "resize", "resample", "mean", "std"):
        assert getattr(tuned_manifest.image, field) == getattr(imported.image, field), field
    for field in ("max_length", "lowercase", "input_names", "pad_to_max_length", "pad_id"):
        assert getattr(tuned_manifest.text, field) == getattr(imported.text, field), field
    assert tuned_manifest.embed_dim == imported.embed_dim
    assert (tmp_path / "tuned" / "tokenizer.json").read_bytes() == (tmp_path / "imported" / "tokenizer.json").read_bytes()

    capsys.readouterr()
    assert clipalbum(["eval", "--model", str(tmp_path / "tuned"), "--against", str(tmp_path / "imported"),
                      "--images", str(captioned_album), "--captions", str(captioned_album / "captions.csv"),
                      "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["photos"] == report["against"]["photos"] == 8, report
    assert np.isfinite(report["model"]["recall_at_10"]) and np.isfinite(report["against"]["recall_at_10"])
