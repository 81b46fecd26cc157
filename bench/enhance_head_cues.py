"""How far the enhancer's global head is from what it could be: its exposure and colour errors against the exact
correction of each case, and the PSNR of the global correction alone (no UNet) for the head, for the white point,
for what ships (`auto`: where the photo is clean, contrast from its black point and exposure from its white
point; colour the head's) and for the exact correction, side by side on the same degraded photos; prints JSON.

The white point (server/enhance/tone.py) brightens until the photo's brightest pixels (the 99.9th percentile
of each pixel's brightest channel, in linear light, after the colour correction) reach white, never darkens, at
most +2.5 EV. Its column is scored with the exact colour correction, so that only exposure differs from the
exact column; so is "head_exposure", the head's. "auto" is the whole automatic correction as it ships.
"white_at_5_percent" is the share of clean photos whose percentile is within 5 % of white (sRGB).

    .venv/bin/python bench/enhance_head_cues.py --clean ../shared/data/enhance-dev/cbsd68 ../shared/data/enhance-dev/kodak24
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from clipalbum.server.enhance.cases import CASES, case_correction, degrade_case
from clipalbum.server.enhance.evaluate import clean_photos, globally_corrected, psnr
from clipalbum.server.enhance.tone import WHITE_QUANTILE, tone_view, white_point_ev
from clipalbum.server.enhance.manifest import PACKAGED_ENHANCER
from clipalbum.server.enhance.runtime import EnhanceOptions, Enhancer, photo_pivot
from clipalbum.server.preprocess import decode_photo


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"mean": round(float(a.mean()), 3), "sd": round(float(a.std()), 3),
            "rms": round(float(np.sqrt(np.mean(a ** 2))), 3), "median_abs": round(float(np.median(np.abs(a))), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", nargs="+", type=Path, required=True, help="folders of clean photos")
    parser.add_argument("--enhancer", type=Path, default=PACKAGED_ENHANCER)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)
    enhancer = Enhancer(args.enhancer)
    if "embedding" in enhancer.head_inputs:
        parser.error(f"{args.enhancer}'s head reads the photo's CLIP embedding, which this bench does not compute")
    files = clean_photos(args.clean, args.limit)
    photos = [(p.name, np.asarray(decode_photo(p, min_side=1 << 30).image)) for p in files]
    at_white = [float(np.quantile(clean.max(axis=-1), WHITE_QUANTILE)) >= 0.95 * 255 for _, clean in photos]
    cases = {}
    for case in CASES:
        errors: dict[str, list[float]] = {"head_ev": [], "head_log_red": [], "head_log_blue": [], "white_point_ev": [],
                                          "auto_ev": []}
        scores: dict[str, list[float]] = {"degraded": [], "head": [], "head_exposure": [], "white_point": [],
                                          "auto": [], "exact": []}
        for name, clean in photos:
            degraded = degrade_case(clean, case, args.seed, key=name)
            exact = case_correction(case, args.seed, key=name)
            head = enhancer.predict_params(degraded)  # no CLIP embedding: the shipped head does not read one
            white = white_point_ev(tone_view(degraded), exact, float(photo_pivot(degraded)))
            auto = enhancer.resolve_params(degraded, EnhanceOptions(), None, None)
            errors["head_ev"].append(head.exposure_ev - exact.exposure_ev)
            errors["head_log_red"].append(head.log_gain_red - exact.log_gain_red)
            errors["head_log_blue"].append(head.log_gain_blue - exact.log_gain_blue)
            errors["white_point_ev"].append(white - exact.exposure_ev)
            errors["auto_ev"].append(auto.exposure_ev - exact.exposure_ev)
            if case in ("under", "cast"):  # noise-free: the global correction alone is the whole job
                scores["degraded"].append(psnr(degraded, clean))
                scores["head"].append(psnr(globally_corrected(degraded, head), clean))
                # exposure alone, colour as the exact correction: the head's exposure against the white point's
                for method, ev in (("head_exposure", head.exposure_ev), ("white_point", white)):
                    scores[method].append(psnr(globally_corrected(degraded, exact._replace(exposure_ev=ev)), clean))
                scores["auto"].append(psnr(globally_corrected(degraded, auto), clean))
                scores["exact"].append(psnr(globally_corrected(degraded, exact), clean))
        cases[case] = {"errors": {k: summary(v) for k, v in errors.items()},
                       "global_only_psnr": {k: round(float(np.mean(v)), 2) for k, v in scores.items() if v}}
    print(json.dumps({"photos": len(photos), "folders": [str(f) for f in args.clean], "enhancer": str(args.enhancer),
                      "seed": args.seed, "load_average": os.getloadavg()[0],
                      "white_at_5_percent": round(float(np.mean(at_white)), 3), "cases": cases}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
