"""`clipalbum enhance train`: train the enhancer from a TOML config (running it again resumes)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from clipalbum.training.cli import add_run_arguments, config_path, run_overrides, shipped_configs
from clipalbum.training.enhance.config import config_to_dict, load_config

CONFIGS = Path(__file__).parent / "configs"


def train_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clipalbum enhance train", description=(
        "Train the enhancer on folders of clean photos (degradations are synthesised on the fly). "
        "Running the same command again resumes from OUT/last."))
    parser.add_argument("config", help=f"TOML config file, or a shipped config name: {shipped_configs(CONFIGS)}")
    add_run_arguments(parser, "--set data.folders='[\"~/Pictures\"]'")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(config_path(args.config, CONFIGS), run_overrides(args))
    except (FileNotFoundError, ValueError) as exc:
        print(f"clipalbum enhance train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    from clipalbum.training.enhance.trainer import train_enhancer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = train_enhancer(cfg, fresh=args.fresh, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as exc:
        print(f"clipalbum enhance train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"checkpoint": str(result.checkpoint), "steps": result.steps,
                      "seconds": round(result.seconds, 1), "losses": result.last_losses}))
    print(f"next: clipalbum enhance export {result.run_dir} ENHANCER_DIR")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "train":
        return train_main(argv[1:])
    print("usage: clipalbum enhance train CONFIG [--set KEY=VALUE] [--out RUN]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
