"""The specified model (ResNet-50 at 256 px + DistilBERT, randomly initialised) trains, exports and serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipalbum.export.cli import main as export_main
from clipalbum.server.encoders import load_encoders
from clipalbum.server.library import Library
from clipalbum.server.settings import data_paths
from clipalbum.server.preprocess import load_model_input
from clipalbum.training.cli import CONFIGS
from clipalbum.training.cli import main as train_main


@pytest.mark.slow
def test_resnet50_distilbert_trains_a_few_steps_on_cpu_exports_and_serves(captioned_album: Path,
                                                                         tmp_path: Path) -> None:
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    source = json.dumps(str(captioned_album / "captions.csv"))
    # The shipped config as it is (no hub: pretrained = "none"); only the data, batch and length of the run change.
    assert train_main([str(CONFIGS / "resnet50-distilbert.toml"), "--out", str(run), "-q",
                       "--set", f"data.sources=[{{format=\"csv\", path={source}, images=\"{captioned_album}\"}}]",
                       "--set", "data.batch_size=2", "--set", "data.eval_batch_size=4", "--set", "data.workers=0",
                       "--set", "data.val_fraction=0.25", "--set", "train.max_steps=2", "--set", "train.device=\"cpu\"",
                       ]) == 0
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in events if e["event"] == "done"] == [2]
    meta = json.loads((run / "best" / "checkpoint.json").read_text())
    assert meta["text_hf_config"]["model_type"] == "distilbert" and meta["text_hf_config"]["dim"] == 768
    assert steps == [] or all(np.isfinite(e["loss"]) for e in steps)

    assert export_main([str(run / "best"), str(bundle), "-q"]) == 0
    encoders = load_encoders(bundle)
    manifest = encoders.manifest
    assert (manifest.embed_dim, manifest.image.size, manifest.text.max_length) == (256, 256, 200)
    photo = next(captioned_album.rglob("*.png"))
    image = encoders.image.encode(load_model_input(photo, manifest.image)[None])
    text = encoders.text.encode(["a cat", "a rocket on a launch pad"])
    assert image.shape == (1, 256) and text.shape == (2, 256)
    assert np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)

    # Served: the library indexes the album with this bundle and answers a text search from it.
    library = Library.open(data_paths(tmp_path / "data"), model=bundle, roots=[str(captioned_album)])
    try:
        library.index()
        response = library.search_text("a cat", k=3)
    finally:
        library.close()
    assert len(response.results) == 3
