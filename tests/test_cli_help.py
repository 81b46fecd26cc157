"""Every option of every clipalbum command has help text, and the help of an option with a default says it."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator

import pytest

from clipalbum.server.cli import build_parser


class Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def parser_of(module: str, argv: list[str]) -> argparse.ArgumentParser:
    """The parser `module.main(argv)` builds (stopped at its parse_args, before it does anything)."""
    def capture(self, *args, **kwargs):
        raise Captured(self)

    target = importlib.import_module(module)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
        with pytest.raises(Captured) as caught:
            target.main(argv)
    return caught.value.parser


# Commands whose modules build their own parser: (module, arguments that reach it).
DELEGATED = [("clipalbum.server.enhance.cli", []), ("clipalbum.server.enhance.cli", ["eval"]),
             ("clipalbum.training.cli", []), ("clipalbum.training.cli", ["split"]), ("clipalbum.export.cli", []),
             ("clipalbum.training.enhance.cli", ["train"]), ("clipalbum.export.enhance_cli", ["export"]),
             ("clipalbum.export.import_cli", [])]


def options(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from options(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action


def undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for name, action in options(parser, path):
        if not action.help:
            missing.append(f"{name}: no help")
        elif action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in action.help:
            missing.append(f"{name}: default {action.default!r} not in its help")
    return missing


def test_the_main_commands_document_every_option() -> None:
    assert undocumented(build_parser(), "clipalbum") == []


@pytest.mark.parametrize(("module", "argv"), DELEGATED, ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_delegated_commands_document_every_option(module: str, argv: list[str]) -> None:
    if module.startswith(("clipalbum.training", "clipalbum.export")):
        pytest.importorskip("torch", reason="train and export need clipalbum[train]")
    parser = parser_of(module, argv)
    assert undocumented(parser, parser.prog) == []


def test_the_check_notices_a_missing_help() -> None:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--k", type=int, default=20, help="how many")
    parser.add_argument("--json", action="store_true")
    assert undocumented(parser, "x") == ["x --k: default 20 not in its help", "x --json: no help"]
