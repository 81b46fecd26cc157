"""`clipalbum model import SOURCE --out BUNDLE`: a pretrained CLIP or SigLIP checkpoint -> a model bundle."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clipalbum model import", description=(
        "Import a pretrained CLIP as a model bundle: a transformers CLIPModel or SiglipModel (a folder, or a hub "
        "name where there is a network) or an OpenCLIP model. ONNX towers are checked against the original on real photos "
        "and captions; its own preprocessing and tokenizer are recorded. Serve it with --model BUNDLE."))
    parser.add_argument("source", help="a folder holding config.json, the weights and the tokenizer; a hub name "
                        "such as openai/clip-vit-base-patch32 or google/siglip-base-patch16-224 (downloads it); or open_clip:ARCH, e.g. "
                        "open_clip:ViT-B-32, with --pretrained")
    parser.add_argument("--pretrained", metavar="FILE|TAG", help="for open_clip:ARCH: a local weights file, or "
                        "one of open_clip's tags for ARCH (downloads it), or 'none' for random weights")
    parser.add_argument("--out", required=True, help="the bundle folder to write (replaced atomically)")
    parser.add_argument("--quantize", choices=["none", "text-int8", "int8"], default="none",
                        help="int8: both towers dynamically quantized; text-int8: the text tower only, for "
                             "faster queries (default none); refused when a tower loses more than its gate")
    parser.add_argument("--dev-set", nargs=2, metavar=("IMAGES", "CAPTIONS"), help="a photo folder and its "
                        "image,caption CSV: a quantized import is also measured against fp32 there and refused if "
                        "it loses more than one point of Recall@10 (default: the cosine gates only)")
    parser.add_argument("--model-id", help="the bundle's model id (default: hf-NAME-DIGEST or "
                        "openclip-ARCH-WEIGHTS-DIGEST, a digest of the weights)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.dev_set and args.quantize == "none":
        parser.error("--dev-set measures a quantized import against fp32; add --quantize text-int8 or int8")
    logging.getLogger("clipalbum.export").setLevel(logging.INFO)
    try:
        from transformers.utils import logging as transformers_logging

        from clipalbum.export.model_import import import_model
        from clipalbum.export.onnx_export import ParityError
    except ImportError as exc:
        print(f"clipalbum model import: needs the export extras ({exc}); pip install 'clipalbum[export]'",
              file=sys.stderr)
        return 2
    if args.quiet:
        transformers_logging.disable_progress_bar()
    try:
        manifest = import_model(args.source, Path(args.out), quantize=args.quantize, model_id=args.model_id,
                                progress=not args.quiet, pretrained=args.pretrained,
                                dev_set=tuple(Path(p) for p in args.dev_set) if args.dev_set else None)
    except ParityError as exc:
        print(f"clipalbum model import: refused: {exc}", file=sys.stderr)
        return 3
    except (OSError, RuntimeError, ValueError) as exc:  # weights that do not load, a tag open_clip lacks, ...
        print(f"clipalbum model import: {args.source}: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    figures = ", ".join(f"{k} {v:.6f}" for k, v in sorted(manifest.metrics.items()))
    print(f"model bundle {manifest.model_id} ({manifest.embed_dim}-d) written to {args.out}; {figures}")
    print(f"try it: clipalbum index ALBUM --model {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
