"""One model cache for every data directory: found by model id, listed, inspected, removed; read-only commands
never build a model."""

from __future__ import annotations

import json
import shutil
from contextlib import closing
from pathlib import Path

import pytest

from clipalbum.server import model_resolver
from clipalbum.server.cli import main
from clipalbum.server.errors import BundleError
from clipalbum.server.library import Library
from clipalbum.server.model_cache import DEFAULT_MODEL_ID, USES_FILE, cached_bundle
from clipalbum.server.settings import data_paths
from tests.tinybundle import make_tiny_bundle


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CLIPALBUM_MODEL_CACHE", str(folder))
    monkeypatch.delenv("CLIPALBUM_MODEL", raising=False)
    return folder


@pytest.fixture()
def no_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(model_resolver, "build_default_bundle", refuse)


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def cached_default(cache: Path, tiny_bundle: Path) -> Path:
    """The tiny bundle standing in for the default model in the cache (built for real, it takes a minute)."""
    shutil.copytree(tiny_bundle, cache / DEFAULT_MODEL_ID)
    return cache / DEFAULT_MODEL_ID


def test_data_directories_share_the_cached_default(tmp_path: Path, cache: Path, tiny_bundle: Path, no_builds,
                                                   capsys: pytest.CaptureFixture) -> None:
    bundle = cached_default(cache, tiny_bundle)
    for name in ("a", "b"):
        with closing(Library.open(data_paths(tmp_path / name))) as library:
            assert library.model_id == "tiny-test"
        assert not (tmp_path / name / "models").exists()  # nothing built or copied per data directory
    code, out, _ = run(capsys, "model", "list", "--json")
    listing = json.loads(out)
    assert code == 0 and listing["cache"] == str(cache)
    (entry,) = listing["bundles"]
    assert entry["model_id"] == DEFAULT_MODEL_ID and entry["path"] == str(bundle)
    assert entry["used_by"] == [str((tmp_path / "a").resolve()), str((tmp_path / "b").resolve())]
    assert entry["size_bytes"] == sum(p.stat().st_size for p in bundle.iterdir())
    code, out, _ = run(capsys, "model", "list")
    assert f"{DEFAULT_MODEL_ID}  " in out and str(tmp_path / "b") in out


def test_status_and_search_on_a_new_data_directory_build_nothing(tmp_path: Path, cache: Path, no_builds,
                                                                 capsys: pytest.CaptureFixture) -> None:
    data = str(tmp_path / "data")
    code, out, _ = run(capsys, "status", "--data-dir", data)
    assert code == 0 and "indexed 0, pending 0, failed 0" in out and "(not built)" in out
    code, out, err = run(capsys, "search", "a cat", "--data-dir", data)
    assert code == 0 and out == "0 results\n" and "run `clipalbum index FOLDER` first" in err
    code, out, _ = run(capsys, "search", "a cat", "--data-dir", data, "--json")
    assert json.loads(out)["results"] == []
    assert not cache.exists() or not any(cache.iterdir())


def test_status_counts_an_index_whose_model_is_gone(tmp_path: Path, cache: Path, sample_album: Path,
                                                    tiny_bundle: Path, no_builds,
                                                    capsys: pytest.CaptureFixture) -> None:
    data = str(tmp_path / "data")
    assert run(capsys, "index", str(sample_album), "-q", "--data-dir", data, "--model", str(tiny_bundle))[0] == 0
    code, out, _ = run(capsys, "status", "--data-dir", data)  # no --model, and no default built
    assert code == 0 and "model tiny-test (not built)" in out and "indexed 8, pending 0" in out
    # A search there needs the model; where it cannot be built, one line says why (no traceback).
    def without_build_extras(*args, **kwargs):
        raise BundleError("cannot build the default model here (No module named 'torch')")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_resolver, "build_default_bundle", without_build_extras)
        code, _, err = run(capsys, "search", "a cat", "--data-dir", data)
    assert code != 0 and "cannot build the default model here" in err and "Traceback" not in err


def test_a_cached_model_is_chosen_by_id(tmp_path: Path, cache: Path, sample_album: Path, tiny_bundle: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    make_tiny_bundle(cache / "tiny-7", model_id="tiny-7")
    data = str(tmp_path / "data")
    assert run(capsys, "index", str(sample_album), "-q", "--data-dir", data, "--model", "tiny-7")[0] == 0
    code, out, _ = run(capsys, "status", "--data-dir", data, "--model", "tiny-7")
    assert "model tiny-7 (16-d)" in out and "indexed 8" in out
    code, out, _ = run(capsys, "model", "info", "tiny-7")
    assert code == 0 and "tiny-7 (16-d) at" in out and "checksums verified" in out
    assert f"used by: {(tmp_path / 'data').resolve()}" in out
    code, out, _ = run(capsys, "model", "info", "tiny-7", "--json")
    info = json.loads(out)
    assert info["verified"] and info["manifest"]["model_id"] == "tiny-7" and len(info["manifest"]["sha256"]) >= 3


def test_info_refuses_a_tampered_bundle(cache: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = make_tiny_bundle(cache / "tiny-x", model_id="tiny-x")
    with (bundle / "text.onnx").open("ab") as f:
        f.write(b"\0")
    code, _, err = run(capsys, "model", "info", "tiny-x")
    assert code != 0 and "text.onnx" in err and "Traceback" not in err


def test_remove_keeps_a_model_in_use_unless_forced(tmp_path: Path, cache: Path, tiny_bundle: Path, no_builds,
                                                   capsys: pytest.CaptureFixture) -> None:
    bundle = cached_default(cache, tiny_bundle)
    with closing(Library.open(data_paths(tmp_path / "data"))):
        pass
    code, _, err = run(capsys, "model", "remove", DEFAULT_MODEL_ID)
    assert code != 0 and "is used by" in err and "--force" in err and bundle.is_dir()
    code, out, _ = run(capsys, "model", "remove", DEFAULT_MODEL_ID, "--force")
    assert code == 0 and not bundle.exists() and not any(p.name.startswith(".removing") for p in cache.iterdir())
    code, _, err = run(capsys, "model", "remove", DEFAULT_MODEL_ID)
    assert code != 0 and f"no model '{DEFAULT_MODEL_ID}'" in err


def test_a_data_directory_that_is_gone_no_longer_holds_its_model(tmp_path: Path, cache: Path,
                                                                 tiny_bundle: Path, no_builds,
                                                                 capsys: pytest.CaptureFixture) -> None:
    bundle = cached_default(cache, tiny_bundle)
    with closing(Library.open(data_paths(tmp_path / "data"))):
        pass
    shutil.rmtree(tmp_path / "data")
    assert json.loads(run(capsys, "model", "list", "--json")[1])["bundles"][0]["used_by"] == []
    assert run(capsys, "model", "remove", DEFAULT_MODEL_ID)[0] == 0 and not bundle.exists()


@pytest.mark.parametrize("name", ["..", "../elsewhere", "/etc", "a/b"])
def test_remove_takes_only_a_model_id(cache: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    (cache / "keep").mkdir(parents=True)
    code, _, err = run(capsys, "model", "remove", name)
    assert code != 0 and ("is not a model id" in err or "no model" in err)
    assert (cache / "keep").is_dir()


def test_a_damaged_record_of_uses_is_started_again(tmp_path: Path, cache: Path, tiny_bundle: Path,
                                                   no_builds, capsys: pytest.CaptureFixture) -> None:
    cached_default(cache, tiny_bundle)
    (cache / USES_FILE).write_text("{not json")
    with closing(Library.open(data_paths(tmp_path / "data"))):
        pass
    recorded = json.loads((cache / USES_FILE).read_text())["data_dirs"][str((tmp_path / "data").resolve())]
    assert recorded[str((cache / DEFAULT_MODEL_ID).resolve())]["model_id"] == "tiny-test"


def test_a_one_off_model_does_not_unprotect_the_index_model(tmp_path: Path, cache: Path, tiny_bundle: Path,
                                                           no_builds, capsys: pytest.CaptureFixture) -> None:
    bundle = cached_default(cache, tiny_bundle)
    make_tiny_bundle(cache / "tiny-7", model_id="tiny-7")
    data = str(tmp_path / "data")
    assert run(capsys, "status", "--data-dir", data, "--model", str(bundle))[0] == 0
    assert run(capsys, "status", "--data-dir", data, "--model", "tiny-7")[0] == 0  # a one-off look
    code, _, err = run(capsys, "model", "remove", DEFAULT_MODEL_ID)
    assert code != 0 and "is used by" in err and bundle.is_dir()


def test_an_older_data_directory_keeps_its_own_copy_of_the_default(tmp_path: Path, cache: Path, no_builds) -> None:
    paths = data_paths(tmp_path / "data")
    make_tiny_bundle(paths.legacy_bundle, model_id=DEFAULT_MODEL_ID)
    assert model_resolver.resolve_bundle(paths) == paths.legacy_bundle  # not built again in the cache
    make_tiny_bundle(paths.legacy_bundle, model_id="bootstrap-old-v1")  # an older default: not used
    with pytest.raises(BundleError, match=str(cached_bundle(DEFAULT_MODEL_ID))):
        model_resolver.resolve_bundle(paths, build_if_missing=False)


def test_the_cache_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CLIPALBUM_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cached_bundle("m1") == tmp_path / "xdg" / "clipalbum" / "models" / "m1"
