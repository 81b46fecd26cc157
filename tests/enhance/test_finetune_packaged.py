"""Fine-tuning starts from the enhancer clipalbum ships, which ships as ONNX only: its weights read back into
torch must do what the packaged graphs do, and a run started from them must start exactly there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="training needs torch")
pytest.importorskip("diffusers", reason="training the enhancer needs clipalbum[train]")

from safetensors.torch import load_file  # noqa: E402

from clipalbum.export.enhance import UNET_INPUTS, _calibration_feeds  # noqa: E402
from clipalbum.server.enhance.manifest import PACKAGED_ENHANCER  # noqa: E402
from clipalbum.server.enhance.runtime import Enhancer  # noqa: E402
from clipalbum.training.enhance.config import load_config  # noqa: E402
from clipalbum.training.enhance.model import RESIDUAL_SCALE, EnhanceUNet, GlobalHead  # noqa: E402
from clipalbum.training.enhance.packaged import PackagedWeightsError, load_packaged  # noqa: E402
from tests.conftest import REPO, skimage_data_dir  # noqa: E402
from tests.enhance.conftest import TRAIN_PHOTOS, real_photo  # noqa: E402

CONFIGS = REPO / "training" / "enhance" / "configs"


def packaged_in_torch() -> tuple[EnhanceUNet, GlobalHead]:
    cfg = load_config(CONFIGS / "finetune.toml")
    unet, head = EnhanceUNet(cfg.unet).eval(), GlobalHead(cfg.head).eval()
    assert load_packaged(unet, head, PACKAGED_ENHANCER) == "int8"  # the package ships the int8 UNet only
    return unet, head


def test_the_packaged_weights_in_torch_do_what_the_packaged_graphs_do() -> None:
    unet, head = packaged_in_torch()
    packaged = Enhancer(PACKAGED_ENHANCER)
    photos = [real_photo("coffee.png"), real_photo("astronaut.png")]
    for photo in photos:  # the head is fp32 in both: the same correction
        size = head.thumb
        thumb = torch.from_numpy(np.asarray(Image.fromarray(photo).resize((size, size), Image.Resampling.BOX),
                                            dtype=np.float32) / 255).permute(2, 0, 1)[None]
        with torch.inference_mode():
            ours = head(thumb, torch.zeros(1, 256), torch.zeros(1, 256))[0].numpy()
        assert np.abs(ours - np.asarray(packaged.predict_params(photo))).max() < 1e-4
    for feed in _calibration_feeds(photos, 128):  # the UNet: the int8 graph against the dequantized weights
        graph = packaged.unet.run(None, feed)[0] / RESIDUAL_SCALE
        with torch.inference_mode():
            weights = unet(*(torch.from_numpy(feed[name]) for name in UNET_INPUTS)).numpy() / RESIDUAL_SCALE
        # In 0..1 pixel units: what int8 activations cost, far below the restoration itself.
        assert np.sqrt(np.mean((graph - weights) ** 2)) < 0.1 * np.sqrt(np.mean(weights ** 2))


def test_a_config_of_another_architecture_is_refused() -> None:
    cfg = load_config(CONFIGS / "tiny.toml")
    with pytest.raises(PackagedWeightsError, match="another architecture"):
        load_packaged(EnhanceUNet(cfg.unet), GlobalHead(cfg.head), PACKAGED_ENHANCER)


def test_a_fine_tune_starts_from_the_packaged_enhancer(tmp_path: Path) -> None:
    from clipalbum.training.enhance.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in TRAIN_PHOTOS[:2]:
        shutil.copy2(skimage_data_dir() / name, photos / name)
    run = tmp_path / "run"
    settings = {"data.folders": [str(photos)], "train.steps": 1, "optim.lr": 0.0, "optim.head_lr": 0.0,
                "data.short_side": 160, "data.crop": 128, "data.patch": 64, "train.batch": 2,
                "train.cache_dir": str(REPO / ".cache" / "enhance")}
    args = [a for key, value in settings.items() for a in ("--set", f"{key}={json.dumps(value)}")]
    assert main(["train", "finetune", "--quiet", "--out", str(run), *args]) == 0
    unet, head = packaged_in_torch()
    for module, saved in ((unet, load_file(str(run / "last" / "unet.safetensors"))),
                          (head, load_file(str(run / "last" / "head.safetensors")))):
        for name, value in module.state_dict().items():  # learning rate 0: the one step changed nothing
            assert torch.equal(saved[name], value), name
    events = [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert events.count("init") == 1
    # Run again for one more step: it resumes from its own checkpoint, whatever train.init says now.
    gone = json.dumps(str(tmp_path / "gone"))
    assert main(["train", "finetune", "--quiet", "--out", str(run), *args, "--set", "train.steps=2",
                 "--set", f"train.init={gone}"]) == 0
    events = [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert events.count("init") == 1 and "resume" in events
