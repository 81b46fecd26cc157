"""`clipalbum enhance`: enhance photos (CPU, ONNX Runtime), `enhance eval`, and the torch-side `enhance train`
and `enhance export`, which this module hands to training/ and export/."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import msgspec
from tqdm import tqdm

from clipalbum.server.enhance.manifest import enhancer_dir
from clipalbum.server.errors import BundleError, ClipalbumError, ImageDecodeError
from clipalbum.server.pathnames import for_terminal
from clipalbum.server.preprocess import PHOTO_SUFFIXES

log = logging.getLogger(__name__)

DELEGATED = {"train": ("clipalbum.training.enhance.cli", "train"), "export": ("clipalbum.export.enhance_cli", "export")}


def _auto_or_float(low: float | None, high: float | None, what: str):
    def parse(text: str) -> float | None:
        if text == "auto":
            return None
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} is 'auto' or a number, not {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{what} must be between {low} and {high}, not {value:g}")
        return value
    return parse


def _steps(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 50:
        raise argparse.ArgumentTypeError("--steps must be between 1 and 50")
    return value


def photo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipalbum enhance", description=(
        "Fix noisy, dark or badly lit photos. Results are new files under --out with the input's name; "
        "originals are only read. Also: `clipalbum enhance eval|train|export --help`."))
    p.add_argument("photos", nargs="+", help="photo files or folders (folders are searched recursively)")
    p.add_argument("--out", required=True, help="folder for the results (not the folder of an input photo)")
    p.add_argument("--format", default="same", choices=["same", "jpeg", "png"], help="output format (default same)")
    p.add_argument("--denoise", default=None, type=_auto_or_float(0, 1, "--denoise"), metavar="auto|0..1",
                   help="how much noise to remove (default auto: by the noise the photo shows, none on a clean one)")
    p.add_argument("--exposure", default=None, type=_auto_or_float(-5, 5, "--exposure"), metavar="auto|EV",
                   help="brighten (+) or darken (-) in stops (default auto: up to where the photo's highlights "
                        "reach white, read once denoised)")
    p.add_argument("--contrast", default=None, type=_auto_or_float(0, 1, "--contrast"), metavar="auto|0..1",
                   help="how far to stretch the tones (default auto: the photo's lost contrast, from its black "
                        "point, read once denoised)")
    p.add_argument("--temperature", default=None, type=_auto_or_float(1500, 15000, "--temperature"),
                   metavar="auto|KELVIN", help="the light the photo was taken in (3000: tungsten; corrected to daylight)")
    p.add_argument("--prompt", help='what the result should look like, e.g. "warm evening light" or "brighter"')
    p.add_argument("--steps", type=_steps, default=1, help="diffusion steps (default 1; more is slower)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to run the UNet (default auto: a GPU or Apple MPS when present, else the CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files under --out")
    _add_models(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--enhancer", help="enhancer directory (default: $CLIPALBUM_ENHANCER or the packaged one)")
    p.add_argument("--data-dir", help="the data directory whose search model to use (default: "
                   "$CLIPALBUM_DATA_DIR or $XDG_DATA_HOME/clipalbum)")
    p.add_argument("--model", help="search model bundle folder or cached model id, for the photo's CLIP "
                   "embedding and --prompt (default: $CLIPALBUM_MODEL, else the default model)")


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipalbum enhance eval", description=(
        "Degrade clean photos with a fixed seed, enhance them, and print PSNR, CIEDE2000 and the search "
        "embedding's cosine for the degraded input, the classical pipeline and the model."))
    p.add_argument("--clean", nargs="+", required=True, help="folders of clean photos")
    p.add_argument("--case", default="all", help="combined, noise25, under, cast or all (default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the degradations (default 0)")
    p.add_argument("--steps", type=_steps, default=1, help="diffusion steps (default 1)")
    p.add_argument("--limit", type=int, help="the first N photos only")
    p.add_argument("--precision", choices=["fp32", "int8"], help="default: the enhancer's own default")
    _add_models(p)
    fixed = p.add_mutually_exclusive_group()
    fixed.add_argument("--denoise-only", action="store_true",
                       help="fix the global corrections to none (exposure 0, daylight, contrast as is) and run the UNet "
                            "on every photo (denoise 1): the UNet alone")
    fixed.add_argument("--exact-correction", action="store_true",
                       help="give the model each photo's exact global correction: what a perfect head would reach")
    p.add_argument("--prompts", action="store_true",
                   help="instead: how far each of a set of prompts moves warmth, brightness and contrast")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def collect_photos(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(photo, its name under --out): a file keeps its name, a folder's photos their path inside it."""
    found: list[tuple[Path, Path]] = []
    for name in inputs:
        path = Path(name).expanduser()
        if path.is_dir():
            found += [(p, p.relative_to(path)) for p in sorted(path.rglob("*"))
                      if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file() and not p.name.startswith(".")]
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            raise ClipalbumError(f"{for_terminal(name)} does not exist")
    if not found:
        raise ClipalbumError("no photos found in " + ", ".join(for_terminal(n) for n in inputs))
    return found


def _search_encoders(args: argparse.Namespace):
    """The search bundle for embeddings, or None (enhancing still works, unconditioned)."""
    from clipalbum.server.encoders import load_encoders
    from clipalbum.server.model_resolver import resolve_bundle
    from clipalbum.server.settings import data_paths

    try:
        return load_encoders(resolve_bundle(data_paths(args.data_dir), args.model, build_if_missing=False))
    except BundleError as exc:
        if args.prompt:
            raise ClipalbumError(f"--prompt needs the search model: {exc}") from exc
        log.warning("no search model (%s): enhancing without the photo's CLIP embedding", exc)
        return None


def cmd_enhance(args: argparse.Namespace) -> int:
    from clipalbum.server.enhance.conditioning import Conditioner
    from clipalbum.server.enhance.photoio import output_format, read_photo, to_image, write_photo
    from clipalbum.server.enhance.runtime import EnhanceOptions, load_enhancer

    out_dir = Path(args.out).expanduser()
    photos = collect_photos(args.photos)
    for photo, _ in photos:
        if photo.resolve().parent == out_dir.resolve():
            raise ClipalbumError(f"--out {for_terminal(args.out)} is the folder of {for_terminal(str(photo))}; "
                                 "results never go next to the originals: choose another folder")
    enhancer = load_enhancer(enhancer_dir(args.enhancer), device=args.device)
    conditioner = Conditioner(_search_encoders(args), enhancer.manifest.conditioning_model_id)
    prompt = conditioner.text(args.prompt) if args.prompt else None
    options = EnhanceOptions(denoise=args.denoise, exposure=args.exposure, contrast=args.contrast,
                             temperature=args.temperature, steps=args.steps)
    failed = 0
    overall = tqdm(total=len(photos), desc="photos", unit="photo", disable=args.quiet or len(photos) < 2)
    for photo, name in photos:
        try:
            source = read_photo(photo)
            fmt, suffix = output_format(source.format, args.format, source.alpha is not None)
            target = out_dir / name.with_suffix(suffix)
            if target.exists() and not args.overwrite:
                raise FileExistsError(f"{for_terminal(str(target))} exists (use --overwrite to replace it)")
            with tqdm(total=1, desc=photo.name, unit="tile", leave=False, disable=args.quiet) as bar:
                def progress(done: int, total: int) -> None:
                    bar.total = total
                    bar.n = done
                    bar.refresh()

                result, applied = enhancer.enhance(source.pixels, options, embedding=conditioner.image(source.pixels),
                                                  prompt=prompt, progress=progress)
            write_photo(to_image(result, source, fmt), source, target, fmt, args.overwrite)
            print(f"{for_terminal(str(target))}  (exposure {applied.params.exposure_ev:+.2f} EV)", file=sys.stderr if args.quiet else sys.stdout)
        except (ImageDecodeError, FileExistsError) as exc:
            failed += 1
            print(f"clipalbum enhance: {exc}", file=sys.stderr)
        overall.update(1)
    overall.close()
    if failed:
        print(f"clipalbum enhance: {failed} of {len(photos)} photos not enhanced", file=sys.stderr)
    return 1 if failed else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from clipalbum.server.encoders import load_encoders
    from clipalbum.server.enhance.evaluate import evaluate_enhancer, expand_cases
    from clipalbum.server.enhance.runtime import Enhancer
    from clipalbum.server.model_resolver import resolve_bundle
    from clipalbum.server.settings import data_paths

    if args.prompts and (args.denoise_only or args.exact_correction):
        raise ClipalbumError("--prompts measures the head's own correction: it takes neither --denoise-only nor "
                             "--exact-correction")
    try:
        cases = expand_cases(args.case)
    except ValueError as exc:
        raise ClipalbumError(str(exc)) from exc
    enhancer = Enhancer(enhancer_dir(args.enhancer), precision=args.precision)
    encoders = load_encoders(resolve_bundle(data_paths(args.data_dir), args.model, build_if_missing=False))
    if args.prompts:
        from clipalbum.server.enhance.evaluate import prompt_effects

        effects = prompt_effects(enhancer, encoders, [Path(f).expanduser() for f in args.clean], limit=args.limit)
        if args.json:
            print(json.dumps(msgspec.to_builtins(effects), indent=2))
        else:
            print(f"{'prompt':<22} {'warmth':>8} {'brightness':>11} {'contrast':>9}")
            for e in effects:
                print(f"{e.prompt:<22} {e.warmth:+8.3f} {e.brightness:+11.3f} {e.contrast:+9.3f}")
        return 0
    try:
        from clipalbum.server.enhance.runtime import EnhanceOptions

        options = EnhanceOptions(steps=args.steps, **(dict(exposure=0.0, contrast=0.0, temperature=6500.0, denoise=1.0)
                                                      if args.denoise_only else {}))
        report = evaluate_enhancer(enhancer, encoders, [Path(f).expanduser() for f in args.clean], cases,
                                   seed=args.seed, limit=args.limit, progress=not args.quiet, options=options,
                                   exact_correction=args.exact_correction)
    except (FileNotFoundError, ImportError) as exc:
        raise ClipalbumError(f"{exc}" + (" (pip install 'clipalbum[enhance-eval]')" if isinstance(exc, ImportError) else "")) from exc
    print(json.dumps(msgspec.to_builtins(report), indent=2) if args.json else report.describe())
    return 0


def main(argv: list[str]) -> int:
    """Entry point for `clipalbum enhance ...` (server/cli.py hands it the arguments after `enhance`)."""
    if argv and argv[0] in DELEGATED:
        from clipalbum.server.cli import delegate

        module, extra = DELEGATED[argv[0]]
        return delegate(module, extra, f"enhance {argv[0]}", argv)
    if argv and argv[0] == "eval":
        return cmd_eval(eval_parser().parse_args(argv[1:]))
    return cmd_enhance(photo_parser().parse_args(argv))
