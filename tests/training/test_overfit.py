"""Overfitting a handful of real photos proves the loss, the data path and the export agree end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clipalbum.export.checkpoint import export_checkpoint
from clipalbum.server.evaluate import evaluate_bundle
from tests.training.conftest import tiny_config
from clipalbum.training.data import Collate, PhotoCaptionDataset, load_photos
from clipalbum.training.metrics import retrieval_recalls
from clipalbum.training.model import build_model, image_spec, param_groups, text_spec, tokenizer_path
from clipalbum.training.trainer import Trainer


@torch.no_grad()
def _recalls(model, photos, dataset, collate) -> dict[str, float]:
    model.eval()
    pixels = torch.from_numpy(np.stack([dataset[i][0] for i in range(len(photos))]))
    captions = [(i, c) for i, p in enumerate(photos) for c in p.captions]
    tokens = collate.tokenize([c for _, c in captions])
    images = model.encode_image(pixels).numpy()
    texts = model.encode_text(torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])).numpy()
    model.train()
    return retrieval_recalls(images, texts, np.array([i for i, _ in captions]))


def test_a_tiny_model_overfits_eight_real_photos_until_retrieval_is_perfect(captioned_album: Path,
                                                                             tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", captioned_album, "optim.image_lr=1e-3", "optim.text_lr=1e-3",
                      "data.augment=false")
    torch.manual_seed(0)
    photos, _ = load_photos(cfg.data.sources)
    assert len(photos) == 8 and all(len(p.captions) == 3 for p in photos)
    model = build_model(cfg).train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg))
    dataset = PhotoCaptionDataset(photos, image_spec(cfg))  # the server's preprocessing
    collate = Collate(tokenizer_path(cfg), text_spec(cfg))  # the server's tokenisation

    first = _recalls(model, photos, dataset, collate)
    recalls = first
    for step in range(300):
        dataset.epoch = step  # a different caption of each photo every step
        batch = collate([dataset[i] for i in range(len(photos))])
        loss = model(batch["pixels"], batch["input_ids"], batch["attention_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 19:
            recalls = _recalls(model, photos, dataset, collate)
            if recalls["t2i_r1"] == 100 and recalls["i2t_r1"] == 100:
                break
    assert first["t2i_r1"] < 50  # random weights: retrieval starts near chance (1 in 8)
    assert recalls["t2i_r1"] == 100 and recalls["i2t_r1"] == 100, recalls

    # The same weights, exported to ONNX and run by the server's evaluation, retrieve just as well.
    trainer = Trainer(cfg, progress=False)
    from clipalbum.training.config import config_to_dict
    from clipalbum.training.towers import text_model_config

    checkpoint = trainer.save("best", model.eval(), {"config": config_to_dict(cfg),
                                                     "text_hf_config": text_model_config(cfg.text)}, None)
    bundle = tmp_path / "bundle"
    export_checkpoint(checkpoint, bundle)
    report = evaluate_bundle(bundle, captioned_album, captioned_album / "captions.csv", progress=False)
    assert (report.photos, report.captions) == (8, 24)
    assert report.recall_at_1 == 1.0 and report.image_recall_at_1 == 1.0
