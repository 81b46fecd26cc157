"""Where a model's text-search scores stop meaning much: the cut-off the web page applies by default."""

from __future__ import annotations

from clipalbum.server.bundle import Manifest
from clipalbum.server.model_cache import DEFAULT_MODEL_ID

# Measured with bench/score_cutoff.py on flickr8k-dev (each caption against its own photo and 795 others) for
# models whose manifest records none: at 0.15 the default keeps 78 % of true matches and leaves a nonsense
# query 13 of 796 photos on average (0.10: 87 % and 69; 0.20: 64 % and 1.6). A per-query z-score cut did
# worse (38 % kept at 11 nonsense photos), so the cut is absolute.
MEASURED_MIN_SCORE = {DEFAULT_MODEL_ID: 0.15}


def suggested_min_score(manifest: Manifest) -> float | None:
    """The text-search score below which results are mostly noise for this model: the manifest's
    `metrics.suggested_min_score`, else a measured one, else None (no cut: scores of an unmeasured model
    say nothing about where noise starts)."""
    recorded = manifest.metrics.get("suggested_min_score")
    return float(recorded) if recorded is not None else MEASURED_MIN_SCORE.get(manifest.model_id)
