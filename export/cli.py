"""`clipalbum export CHECKPOINT BUNDLE_DIR`: a training checkpoint -> an ONNX model bundle."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Entry point for `clipalbum export ...` (server/cli.py delegates here)."""
    parser = argparse.ArgumentParser(prog="clipalbum export", description=(
        "Export a training checkpoint (a run directory, or its best/ or last/ folder) to a model bundle."))
    parser.add_argument("checkpoint", help="run directory or checkpoint folder written by 'clipalbum train'")
    parser.add_argument("bundle", help="bundle directory to write (replaced atomically)")
    parser.add_argument("--quantize", choices=["none", "int8", "text-int8"], default="none",
                        help="int8: both towers dynamically quantized (smaller, faster on a Pi-class CPU); "
                             "text-int8: the text tower only, for image towers that lose too much (default none)")
    parser.add_argument("--parity-images", nargs="*", default=None, metavar="PHOTO",
                        help="real photos on which torch and ONNX Runtime outputs must agree")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.getLogger("clipalbum.export").setLevel(logging.INFO)
    from clipalbum.export.checkpoint import export_checkpoint

    try:
        manifest = export_checkpoint(Path(args.checkpoint), Path(args.bundle), quantize=args.quantize,
                                     parity_images=[Path(p) for p in args.parity_images or []] or None,
                                     progress=not args.quiet)
    except FileNotFoundError as exc:
        print(f"clipalbum export: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # ParityError: the ONNX graph does not reproduce the model closely enough
        print(f"clipalbum export: {exc}", file=sys.stderr)
        return 3
    print(f"model bundle {manifest.model_id} ({manifest.embed_dim}-d) written to {args.bundle}")
    print(f"try it: clipalbum eval --model {args.bundle} --images DIR --captions CSV")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
