"""`clipalbum enhance export RUN DIR`: a trained enhancer run -> ONNX files and enhancer.json."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clipalbum enhance export", description=(
        "Export a trained enhancer (RUN or RUN/last) to DIR: the UNet in fp32 and int8, the head, a manifest "
        "with checksums. Checked against torch on real photos first; DIR is replaced only if that passes."))
    parser.add_argument("run", type=Path, help="the run directory `clipalbum enhance train` wrote (or RUN/last)")
    parser.add_argument("out", type=Path, help="the enhancer directory to write")
    parser.add_argument("--model-id", help="the enhancer's id (default: enhance-RUNNAME)")
    parser.add_argument("--no-int8", action="store_true", help="fp32 only")
    parser.add_argument("--int8-only", action="store_true",
                        help="keep only the int8 UNet (for the packaged enhancer); refused if it loses over 0.3 dB")
    parser.add_argument("--description", default="", help="a line for the manifest (default: none)")
    parser.add_argument("--tile", type=int, default=512, help="tile side in pixels (default 512)")
    args = parser.parse_args(argv[1:] if argv and argv[0] == "export" else argv)
    from clipalbum.export.enhance import ParityError, default_parity_photos, export_enhancer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("root", "onnxruntime"):  # the quantizer logs every node it touches at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    photos = default_parity_photos()
    try:
        manifest = export_enhancer(args.run, args.out, photos, model_id=args.model_id, tile=args.tile,
                                   int8=not args.no_int8, int8_only=args.int8_only, description=args.description)
    except (FileNotFoundError, ValueError, ParityError) as exc:
        print(f"clipalbum enhance export: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"enhancer": str(args.out), "model_id": manifest.model_id,
                      "default_precision": manifest.default_precision, "metrics": manifest.metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
