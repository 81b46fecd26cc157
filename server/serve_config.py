"""`clipalbum serve`'s settings from a clipalbum.toml file, with the command line's options over them."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipalbum.server.errors import ClipalbumError
from clipalbum.server.pathnames import for_terminal

CONFIG_NAME = "clipalbum.toml"


@dataclass(frozen=True)
class ServeConfig:
    """What `serve` runs with. The defaults are the command line's."""

    albums: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    rescan_minutes: float = 30.0
    allowed_hosts: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)
    require_token: bool = False
    model: str | None = None
    follow_links_outside: bool | None = None  # None: as the data directory remembers it
    database: str | None = None  # a PostgreSQL URL; None: $CLIPALBUM_DATABASE, else the data directory's SQLite
    thumbnails: str | None = None  # the thumbnail folder; None: in the data directory


# What each key's value must be, for the messages of a file that says otherwise.
_KINDS: dict[str, tuple[type, ...]] = {
    "albums": (list,), "host": (str,), "port": (int,), "rescan_minutes": (int, float), "allowed_hosts": (list,),
    "cors_origins": (list,), "require_token": (bool,), "model": (str,), "follow_links_outside": (bool,),
    "database": (str,), "thumbnails": (str,),
}


def config_dirs(data_dir: Path) -> list[Path]:
    """Where clipalbum.toml is looked for, first found wins: the data directory, then the config directory
    ($XDG_CONFIG_HOME/clipalbum, or ~/.config/clipalbum)."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [data_dir, Path(xdg).expanduser() / "clipalbum"]


def find_config(data_dir: Path, given: str | None = None) -> Path | None:
    """--config FILE (which must exist), else $CLIPALBUM_CONFIG, else the first clipalbum.toml of config_dirs."""
    chosen = given or os.environ.get("CLIPALBUM_CONFIG")
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise ClipalbumError(f"no config file at {for_terminal(str(path))}")
        return path
    return next((d / CONFIG_NAME for d in config_dirs(data_dir) if (d / CONFIG_NAME).is_file()), None)


def read_config(path: Path) -> ServeConfig:
    """The file's settings over the defaults. Raises ClipalbumError for bad TOML, an unknown key or a value of
    the wrong kind, naming the file and the key."""
    where = for_terminal(str(path))
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ClipalbumError(f"cannot read {where}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ClipalbumError(f"{where} is not valid TOML: {exc}") from exc
    unknown = sorted(set(values) - set(_KINDS))
    if unknown:
        raise ClipalbumError(f"{where}: unknown setting {', '.join(unknown)} (known: {', '.join(_KINDS)})")
    for key, value in values.items():
        kinds = _KINDS[key]
        wrong = not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))
        if list in kinds and not wrong:
            wrong = not all(isinstance(item, str) for item in value)
        if wrong:
            wanted = "a list of strings" if list in kinds else " or ".join(k.__name__ for k in kinds)
            raise ClipalbumError(f"{where}: {key} must be {wanted}, not {value!r}")
    if "port" in values and not 0 < values["port"] < 65536:
        raise ClipalbumError(f"{where}: port must be between 1 and 65535, not {values['port']}")
    if "rescan_minutes" in values and values["rescan_minutes"] < 0:
        raise ClipalbumError(f"{where}: rescan_minutes must be 0 (never) or more")
    if "rescan_minutes" in values:
        values["rescan_minutes"] = float(values["rescan_minutes"])
    if "albums" in values:  # no shell expands ~ in a file
        values["albums"] = [os.path.expanduser(album) for album in values["albums"]]
    for key in ("model", "thumbnails"):
        if key in values:
            values[key] = os.path.expanduser(values[key])
    return ServeConfig(**values)


def with_overrides(config: ServeConfig, overrides: dict[str, Any]) -> ServeConfig:
    """`config` with every option the command line gave (None or an empty list: not given)."""
    given = {k: v for k, v in overrides.items() if v is not None and v != []}
    return dataclasses.replace(config, **given)


def to_toml(config: ServeConfig) -> str:
    """The settings as a clipalbum.toml would hold them (unset optional ones as comments)."""
    lines = []
    for key, value in dataclasses.asdict(config).items():
        if value is None:
            lines.append(f"# {key} =  (not set)")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            lines.append(f"{key} = {value}")
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(_toml_string(v) for v in value)}]")
        else:
            lines.append(f"{key} = {_toml_string(value)}")
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"
                      for c in escaped)
    return f'"{escaped}"'
