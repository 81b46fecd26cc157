"""`clipalbum service install|uninstall`: the systemd user unit, checked by systemd itself where it is present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from clipalbum.server.cli import main
from clipalbum.server.service import UNIT_NAME, systemd_quote, unit_text


@pytest.fixture()
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


def test_install_writes_a_unit_that_serves_the_data_directory_and_uninstall_removes_it(
        tmp_path: Path, config_home: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "my photos' data"
    settings = tmp_path / "clipalbum.toml"
    settings.write_text("port = 8080\n")
    assert main(["service", "install", "--data-dir", str(data), "--config", str(settings)]) == 0
    unit = config_home / "systemd" / "user" / UNIT_NAME
    assert str(unit) in capsys.readouterr().out
    text = unit.read_text()
    assert f'serve --data-dir "{data}" --config {settings}' in text
    assert "Restart=on-failure" in text and "WantedBy=default.target" in text
    assert main(["service", "install", "--data-dir", str(data)]) == 0  # again: replaced, not duplicated
    assert "--config" not in unit.read_text()
    assert main(["service", "uninstall"]) == 0 and not unit.exists()
    assert main(["service", "uninstall"]) == 0 and "nothing to remove" in capsys.readouterr().out
    assert main(["service", "install", "--config", str(tmp_path / "missing.toml")]) == 2


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not on this machine")
def test_systemd_accepts_the_unit(tmp_path: Path, config_home: Path) -> None:
    assert main(["service", "install", "--data-dir", str(tmp_path / "data with spaces %n")]) == 0
    unit = config_home / "systemd" / "user" / UNIT_NAME
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # Exit 0 is not enough: systemd only warns about a value it ignores (e.g. a bad Restart=).
    assert done.returncode == 0 and UNIT_NAME not in done.stderr and "Failed" not in done.stderr, done.stderr


def test_quoting() -> None:
    assert systemd_quote("/usr/bin/clipalbum") == "/usr/bin/clipalbum"
    assert systemd_quote("/data/my photos") == '"/data/my photos"'
    assert systemd_quote('a"b') == '"a\\"b"'
    assert systemd_quote("100%") == "100%%"
    assert systemd_quote("$HOME") == '"$$HOME"'
    assert 'ExecStart=/x/clipalbum serve --data-dir /d\n' in unit_text(Path("/d"), command=["/x/clipalbum"])
