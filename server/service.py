"""`clipalbum service install|uninstall`: a systemd user unit that runs `clipalbum serve` at boot, restarts it
on failure, and leaves its log to the journal."""

from __future__ import annotations

import os
import sys
from pathlib import Path

UNIT_NAME = "clipalbum.service"


def unit_dir() -> Path:
    """Where systemd looks for a user's own units: $XDG_CONFIG_HOME/systemd/user."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg).expanduser() / "systemd" / "user"


def serve_command() -> list[str]:
    """This installation's `clipalbum`: the script beside the running Python (a virtual environment's), else
    `python -m clipalbum.server.cli` with that same Python."""
    script = Path(sys.executable).parent / "clipalbum"
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "clipalbum.server.cli"]


def systemd_quote(arg: str) -> str:
    """One ExecStart argument: quoted where it holds spaces or quotes, with systemd's % specifiers escaped."""
    arg = arg.replace("%", "%%")
    if arg and not any(c.isspace() or c in "\"'\\;$" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$") + '"'


def unit_text(data_dir: Path, config: Path | None = None, command: list[str] | None = None) -> str:
    args = [*(command or serve_command()), "serve", "--data-dir", str(data_dir)]
    if config is not None:
        args += ["--config", str(config)]
    return f"""[Unit]
Description=clipalbum: search your photos by describing them
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={' '.join(systemd_quote(a) for a in args)}
Environment=PYTHONUNBUFFERED=1
Restart=on-failure
RestartSec=5
# serve stops within 5 s of SIGTERM, even mid-scan; the next start goes on with the index.
TimeoutStopSec=20
# Output goes to the journal: journalctl --user -u clipalbum

[Install]
WantedBy=default.target
"""


def install(data_dir: Path, config: Path | None = None) -> Path:
    """Writes the unit (replacing an older one) and returns its path."""
    target = unit_dir() / UNIT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{UNIT_NAME}.partial")
    partial.write_text(unit_text(data_dir.resolve(), config.resolve() if config else None), encoding="utf-8")
    os.replace(partial, target)
    return target


def uninstall() -> Path | None:
    """Removes the unit; returns its path, or None when there was none."""
    target = unit_dir() / UNIT_NAME
    if not target.is_file():
        return None
    target.unlink()
    return target
