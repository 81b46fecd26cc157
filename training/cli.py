"""`clipalbum train`: train a dual encoder from a TOML config, or split a captions file by photo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from clipalbum.training.config import load_config

CONFIGS = Path(__file__).parent / "configs"


def shipped_configs(folder: Path = CONFIGS) -> str:
    return ", ".join(sorted(p.stem for p in folder.glob("*.toml")))


def config_path(name: str, folder: Path = CONFIGS) -> Path:
    """A config file path, or the name of a config shipped in `folder` (with or without .toml)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = folder / (name if name.endswith(".toml") else f"{name}.toml")
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"no config file {name!r} (shipped configs: {shipped_configs(folder)})")


def add_run_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """The options every training command takes: overrides, run directory, fresh start, printing, quiet."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value, e.g. {example} (values are TOML; repeatable)")
    parser.add_argument("--out", help="run directory (same as --set train.out_dir=...)")
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming from OUT_DIR/last")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run_overrides(args: argparse.Namespace) -> list[str]:
    return list(args.overrides) + ([f"train.out_dir={json.dumps(args.out)}"] if args.out else [])


def _train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clipalbum train", description=(
        "Train a dual encoder. Running the same command again resumes from OUT_DIR/last after a crash."))
    parser.add_argument("config", help=f"TOML config file, or a shipped config name: {shipped_configs()}")
    add_run_arguments(parser, "--set train.epochs=3 --set image.freeze=true")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(config_path(args.config), run_overrides(args))
    except (FileNotFoundError, ValueError) as exc:
        print(f"clipalbum train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        from clipalbum.training.config import config_to_dict

        print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    from clipalbum.training.trainer import train

    logging.getLogger("clipalbum.training").setLevel(logging.INFO)
    try:
        result = train(cfg, fresh=args.fresh, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as exc:
        print(f"clipalbum train: {exc}", file=sys.stderr)
        return 2
    print(f"best checkpoint: {result.best_dir}")
    print(json.dumps({"best": result.best_metrics, "steps": result.steps, "seconds": round(result.seconds, 1)}))
    print(f"next: clipalbum export {result.best_dir} BUNDLE_DIR")
    return 0


def _split(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clipalbum train split", description=(
        "Split a captions file by photo into OUT/train.csv and OUT/heldout.csv (photos are not copied)."))
    parser.add_argument("captions", help="captions file (image,caption CSV unless --format says otherwise)")
    parser.add_argument("out", help="folder for train.csv and heldout.csv")
    parser.add_argument("--images", help="photos folder (default: the captions file's folder or its images/)")
    parser.add_argument("--heldout", type=float, default=0.2, help="fraction of photos held out (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
    parser.add_argument("--format", default="csv", choices=["csv", "flickr30k_csv", "flickr8k_token", "karpathy_json"],
                        help="the captions file's format (default csv)")
    args = parser.parse_args(argv)
    from clipalbum.training.split import split_captions

    result = split_captions(Path(args.captions), Path(args.out), args.heldout, args.seed,
                            Path(args.images) if args.images else None, args.format)
    if result.report.total_skipped():
        print(result.report.describe(), file=sys.stderr)
    print(f"{result.train_photos} train photos -> {result.train_csv}")
    print(f"{result.heldout_photos} held-out photos -> {result.heldout_csv} (seed {args.seed})")
    return 0


def main(argv: list[str]) -> int:
    """Entry point for `clipalbum train ...` (server/cli.py delegates here)."""
    if argv and argv[0] == "split":
        return _split(argv[1:])
    return _train(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
