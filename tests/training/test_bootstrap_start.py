"""head.init = "bootstrap": before any training, the dual encoder embeds as the offline bootstrap does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clipalbum.server.preprocess import load_model_input
from clipalbum.server.textprep import TextTokenizer
from tests.conftest import SAMPLE_PHOTOS
from clipalbum.training.cli import CONFIGS
from clipalbum.training.config import load_config
from clipalbum.training.model import build_model, image_spec, text_spec, tokenizer_path


@pytest.mark.slow
def test_warm_started_heads_rank_like_the_bootstrap(sample_album: Path) -> None:
    from clipalbum.training.bootstrap import BootstrapConfig, build_bootstrap_model

    cfg = load_config(CONFIGS / "offline-effnetlite0-minilm.toml")
    model = build_model(cfg).eval()
    boot = build_bootstrap_model(BootstrapConfig(embed_dim=cfg.head.dim, temperature=cfg.image.class_temperature))
    photos = sorted(p for p in sample_album.rglob("*") if p.name in SAMPLE_PHOTOS)
    pixels = torch.from_numpy(np.stack([load_model_input(p, image_spec(cfg)) for p in photos]))
    tokens = TextTokenizer(tokenizer_path(cfg), text_spec(cfg))([SAMPLE_PHOTOS[p.name] for p in photos])
    ids, mask = torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])
    with torch.no_grad():
        ours = model.encode_text(ids, mask) @ model.encode_image(pixels).T  # (texts, photos)
        theirs = boot.encode_text(ids, mask) @ boot.encode_image(pixels).T
    # LayerNorm centres each vector, so the similarities are close but not identical; the rankings agree.
    assert torch.equal(ours.argmax(dim=1), theirs.argmax(dim=1))
    assert np.corrcoef(ours.flatten().numpy(), theirs.flatten().numpy())[0, 1] > 0.95
