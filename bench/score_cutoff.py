"""Where to cut weak search results: the scores of true matches against those of every photo, on flickr8k-dev;
prints JSON.

Indexes ../shared/data/flickr8k-dev (read in place) with a bundle, scores every caption against every photo,
and reports percentiles of the caption's own photo's score (a true match), of all scores, and the best scores
that nonsense queries get, and for a few cuts what each keeps of both. The web page's default `min_score`
comes from here.

    python bench/score_cutoff.py [--model BUNDLE] [--keep 0.95]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from serving import REPO, resolve_model

from clipalbum.server.library import Library
from clipalbum.server.settings import data_paths

FLICKR = REPO.parent / "shared" / "data" / "flickr8k-dev"
NONSENSE = ["asdf qwerty", "zxcvbnm", "the of and", "lorem ipsum dolor sit amet", "!!!", "1234 5678",
            "xkcd blorf", "quantum chromodynamics lecture notes", "tax return form 1040", "aaaaaaa"]


CUTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)


def percentiles(values: np.ndarray) -> dict[str, float]:
    return {f"p{p}": round(float(np.percentile(values, p)), 4) for p in (1, 5, 10, 25, 50, 75, 90, 99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--keep", type=float, default=0.95, help="share of true matches the cut must keep")
    args = parser.parse_args()
    if not (FLICKR / "captions.csv").is_file():
        print(json.dumps({"skipped": f"{FLICKR} is absent (research data, not part of the project)"}))
        return 0
    with open(FLICKR / "captions.csv", newline="") as f:
        rows = [(row["image"], row["caption"]) for row in csv.DictReader(f)]
    with tempfile.TemporaryDirectory() as tmp:
        library = Library.open(data_paths(Path(tmp)), model=resolve_model(args.model), roots=[str(FLICKR / "images")])
        try:
            library.index()
            rows_by_name = {Path(row.rel_path).name: row for row in library.store.vector_rows(
                [int(i) for i in library.store.embedded_ids(library.model_id)], library.model_id)}
            ids = sorted(rows_by_name)
            vectors = [rows_by_name[name].vector for name in ids]
            gallery = np.stack(vectors)
            index = {name: i for i, name in enumerate(ids)}
            texts = [caption for image, caption in rows if image in index]
            owners = np.array([index[image] for image, _ in rows if image in index])
            queries = library.encoders.text.encode(texts)
            scores = queries @ gallery.T
            true = scores[np.arange(len(texts)), owners]
            nonsense = library.encoders.text.encode(NONSENSE) @ gallery.T
            cut = float(np.quantile(true, 1 - args.keep))
            report = {
                "model_id": library.model_id, "photos": len(ids), "captions": len(texts),
                "true_match_scores": percentiles(true), "all_scores": percentiles(scores.ravel()),
                "nonsense_best_scores": {q: round(float(s), 4) for q, s in zip(NONSENSE, nonsense.max(axis=1))},
                "cut_keeping": args.keep, "cut": round(cut, 4),
                "share_of_all_scores_above_cut": round(float((scores >= cut).mean()), 4),
                "nonsense_results_above_cut_per_query": round(float((nonsense >= cut).sum(axis=1).mean()), 1),
                "by_cut": [{"cut": c, "true_matches_kept": round(float((true >= c).mean()), 3),
                            "share_of_all_scores_above": round(float((scores >= c).mean()), 4),
                            "nonsense_results_per_query": round(float((nonsense >= c).sum(axis=1).mean()), 1)}
                           for c in CUTS],
            }
        finally:
            library.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
