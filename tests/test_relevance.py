"""The cut-off below which a model's text-search scores are mostly noise: recorded, measured, or none."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import msgspec

from clipalbum.server.bundle import read_manifest
from clipalbum.server.library import Library
from clipalbum.server.model_cache import DEFAULT_MODEL_ID
from clipalbum.server.relevance import MEASURED_MIN_SCORE, suggested_min_score
from clipalbum.server.settings import data_paths


def test_a_bundle_gets_its_recorded_then_its_measured_cut_else_none(tiny_bundle: Path) -> None:
    tiny = read_manifest(tiny_bundle)
    assert suggested_min_score(tiny) is None  # never measured: no cut
    assert suggested_min_score(msgspec.structs.replace(tiny, model_id=DEFAULT_MODEL_ID)) == 0.15
    recorded = msgspec.structs.replace(tiny, model_id=DEFAULT_MODEL_ID, metrics={"suggested_min_score": 0.22})
    assert suggested_min_score(recorded) == 0.22
    assert set(MEASURED_MIN_SCORE) == {DEFAULT_MODEL_ID}


def test_status_tells_the_web_page_the_cut(tmp_path: Path, tiny_bundle: Path) -> None:
    with closing(Library.open(data_paths(tmp_path / "data"), model=tiny_bundle)) as library:
        assert library.status().suggested_min_score is None
        library.encoders.manifest = msgspec.structs.replace(library.encoders.manifest,
                                                            metrics={"suggested_min_score": 0.3})
        status = msgspec.json.decode(msgspec.json.encode(library.status()))
    assert status["suggested_min_score"] == 0.3
