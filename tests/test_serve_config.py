"""`clipalbum serve` settings: clipalbum.toml in the data or config directory, the command line over it, and
`serve --print-config`."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from clipalbum.server.cli import main
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.serve_config import ServeConfig, find_config, read_config, to_toml
from clipalbum.server.settings import data_paths


def print_config(capsys: pytest.CaptureFixture, *args: str) -> dict:
    assert main(["serve", "--print-config", *args]) == 0
    return tomllib.loads(capsys.readouterr().out)


def test_the_file_in_the_data_directory_and_the_command_line_over_it(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPALBUM_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    data = tmp_path / "data"
    data.mkdir()
    assert print_config(capsys, "--data-dir", str(data)) == {
        "albums": [], "host": "127.0.0.1", "port": 8000, "rescan_minutes": 30.0, "allowed_hosts": [],
        "cors_origins": [], "require_token": False}  # no file: the defaults (unset ones are comments)
    (data / "clipalbum.toml").write_text(
        'albums = ["~/Pictures", "/srv/photos"]\nhost = "0.0.0.0"\nport = 8080\nrescan_minutes = 0\n'
        'allowed_hosts = ["photos.local"]\nfollow_links_outside = true\n')
    settings = print_config(capsys, "--data-dir", str(data))
    assert settings["albums"] == [str(Path.home() / "Pictures"), "/srv/photos"]
    assert (settings["host"], settings["port"], settings["rescan_minutes"]) == ("0.0.0.0", 8080, 0.0)
    assert settings["allowed_hosts"] == ["photos.local"] and settings["follow_links_outside"] is True
    overridden = print_config(capsys, "--data-dir", str(data), "--port", "9000", "--album", "/mnt/usb",
                              "--no-follow-links-outside", "--require-token")
    assert (overridden["port"], overridden["albums"], overridden["host"]) == (9000, ["/mnt/usb"], "0.0.0.0")
    assert overridden["follow_links_outside"] is False and overridden["require_token"] is True


def test_the_config_directory_and_an_explicit_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPALBUM_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    data = tmp_path / "data"
    assert find_config(data) is None
    (tmp_path / "config" / "clipalbum").mkdir(parents=True)
    shared = tmp_path / "config" / "clipalbum" / "clipalbum.toml"
    shared.write_text("port = 8001\n")
    assert find_config(data) == shared
    data.mkdir()
    (data / "clipalbum.toml").write_text("port = 8002\n")
    assert find_config(data) == data / "clipalbum.toml"  # the data directory's comes first
    assert find_config(data, str(shared)) == shared
    monkeypatch.setenv("CLIPALBUM_CONFIG", str(shared))
    assert find_config(data) == shared
    with pytest.raises(ClipalbumError, match="no config file"):
        find_config(data, str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(("text", "message"), [
    ("port = 80 80\n", "not valid TOML"),
    ('prot = 8000\n', "unknown setting prot"),
    ('port = "8000"\n', "port must be int"),
    ("port = 70000\n", "between 1 and 65535"),
    ('albums = "/srv/photos"\n', "albums must be a list of strings"),
    ("require_token = 1\n", "require_token must be bool"),
    ("rescan_minutes = -5\n", r"0 \(never\) or more"),
])
def test_a_bad_file_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture, text: str,
                                       message: str) -> None:
    path = tmp_path / "clipalbum.toml"
    path.write_text(text)
    with pytest.raises(ClipalbumError, match=message):
        read_config(path)
    assert main(["serve", "--config", str(path), "--print-config"]) == 2
    assert message.split()[0] in capsys.readouterr().err


def test_printed_settings_read_back_the_same(tmp_path: Path) -> None:
    config = ServeConfig(albums=['/photos/"quoted"', "/photos/tab\there", "/fotos/ünï"], host="::", port=1,
                         rescan_minutes=2.5, allowed_hosts=["a.example"], require_token=True, model="/models/m",
                         follow_links_outside=False)
    path = tmp_path / "clipalbum.toml"
    path.write_text(to_toml(config))
    assert read_config(path) == config


def test_serve_runs_with_the_merged_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipalbum.server import app

    ran: dict = {}
    monkeypatch.setattr(app, "serve", lambda paths, **settings: ran.update(settings, data=paths.root))
    (tmp_path / "clipalbum.toml").write_text('albums = ["/srv/photos"]\nport = 8080\nmodel = "/models/m"\n')
    assert main(["serve", "--data-dir", str(tmp_path), "--host", "0.0.0.0"]) == 0
    assert ran == {"data": tmp_path, "model": "/models/m", "albums": ["/srv/photos"], "host": "0.0.0.0",
                   "port": 8080, "rescan_minutes": 30.0, "allowed_hosts": [], "cors_origins": [],
                   "require_token": False, "follow_links_outside": None}


def test_the_database_and_a_shared_thumbnail_folder_come_from_the_file_or_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPALBUM_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "clipalbum.toml").write_text('database = "postgresql://photos@db.lan/album"\n'
                                         'thumbnails = "~/shared-thumbs"\n')
    settings = print_config(capsys, "--data-dir", str(data))
    assert settings["database"] == "postgresql://photos@db.lan/album"
    assert settings["thumbnails"] == str(Path.home() / "shared-thumbs")
    overridden = print_config(capsys, "--data-dir", str(data), "--database", "postgresql://other/db",
                              "--thumbnails", "/srv/thumbs")
    assert (overridden["database"], overridden["thumbnails"]) == ("postgresql://other/db", "/srv/thumbs")
    paths = data_paths(data, overridden["database"], overridden["thumbnails"])
    assert paths.thumbnails == Path("/srv/thumbs") and paths.database_url == "postgresql://other/db"
    assert data_paths(data).thumbnails == data / "thumbnails"
