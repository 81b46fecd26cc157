"""Train (tiny config) -> export -> enhance through the CLI, on real photos, offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipalbum.server.cli import main
from clipalbum.server.enhance.cases import degrade_case
from clipalbum.server.errors import BundleError
from clipalbum.server.enhance.manifest import read_enhancer_manifest
from clipalbum.server.enhance.runtime import EnhanceOptions, Enhancer
from tests.enhance.conftest import real_photo

pytestmark = pytest.mark.slow


def test_training_logs_resumes_and_continues_from_its_last_checkpoint(tiny_enhancer_run: Path) -> None:
    events = [json.loads(line) for line in (tiny_enhancer_run / "log.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "start" and events[-1] == {**events[-1], "event": "end", "step": 30}
    assert [e["step"] for e in events if e["event"] == "train"] == [10, 20, 30]
    assert all(np.isfinite(e["pixel"]) and np.isfinite(e["head_image"]) for e in events if e["event"] == "train")
    from clipalbum.training.enhance.cli import main as train_main

    # The same command again finds the run finished: it resumes at step 30 and does nothing more.
    assert train_main(["train", "tiny", "--quiet", "--out", str(tiny_enhancer_run),
                       "--set", "data.folders=[\"" + str(tiny_enhancer_run.parent) + "\"]"]) in (0, 2)


def test_export_writes_checked_fp32_and_int8_graphs(tiny_enhancer: Path, tmp_path: Path) -> None:
    manifest = read_enhancer_manifest(tiny_enhancer)
    assert set(manifest.unet) == {"fp32", "int8"} and manifest.default_precision in ("fp32", "int8")
    assert manifest.metrics["parity_max_error"] < 2e-3  # torch vs ONNX Runtime on the same inputs
    assert manifest.default_precision == ("int8" if manifest.metrics["int8_psnr_loss"] <= 0.3 else "fp32")
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_enhancer, damaged)
    (damaged / manifest.head).write_bytes(b"damaged")
    with pytest.raises(BundleError, match="damaged"):
        read_enhancer_manifest(damaged)


@pytest.fixture()
def enhancer_dir(tiny_enhancer: Path) -> Path:
    return tiny_enhancer


def test_tiles_give_the_untiled_result(tiny_enhancer_run: Path, tmp_path: Path) -> None:
    from clipalbum.export.enhance_cli import main as export_main

    small, large = tmp_path / "small", tmp_path / "large"
    assert export_main(["export", str(tiny_enhancer_run), str(small), "--tile", "64", "--no-int8"]) == 0
    assert export_main(["export", str(tiny_enhancer_run), str(large), "--tile", "1024", "--no-int8"]) == 0
    photo = degrade_case(real_photo()[:200, :300], "combined", seed=0)
    # One global correction for both: automatic tone runs each enhancer's UNet over the photo's view, tiled too.
    params = Enhancer(large).resolve_params(photo, EnhanceOptions(), None, None)
    tiled, _ = Enhancer(small).enhance(photo, params=params)
    whole, _ = Enhancer(large).enhance(photo, params=params)
    mse = np.mean((tiled.astype(float) - whole.astype(float)) ** 2)
    # GroupNorm sees one tile at a time, so tiles differ a little from the whole photo; the shipped model
    # measured 49.8 dB between 512-px tiles (46.8 with 256-px ones) and the untiled result, this untrained one less.
    assert 10 * np.log10(255 ** 2 / max(mse, 1e-9)) > 35


def test_int8_stays_close_to_fp32(tiny_enhancer: Path) -> None:
    photo = degrade_case(real_photo()[:160, :160], "noise25", seed=0)
    fp32, _ = Enhancer(tiny_enhancer, precision="fp32").enhance(photo)
    int8, _ = Enhancer(tiny_enhancer, precision="int8").enhance(photo)
    assert np.abs(fp32.astype(int) - int8.astype(int)).mean() < 3


def test_fixed_settings_replace_the_models_choice(tiny_enhancer: Path) -> None:
    enhancer = Enhancer(tiny_enhancer)
    photo = real_photo()[:96, :96]
    params = enhancer.resolve_params(photo, EnhanceOptions(exposure=1.0, temperature=3000, contrast=0.0), None, None)
    assert params.exposure_ev == 1.0 and params.log_gain_red < 0 < params.log_gain_blue and params.contrast_log == 0
    brighter, _ = enhancer.enhance(photo, EnhanceOptions(exposure=1.0, denoise=0.0))
    assert brighter.mean() > photo.mean() * 1.2
    with pytest.raises(ValueError, match="denoise"):
        enhancer.enhance(photo, EnhanceOptions(denoise=2.0))


def run_cli(*args: str) -> int:
    return main(["enhance", *args])


def test_cli_writes_new_files_keeps_originals_and_refuses_to_overwrite(enhancer_dir: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    album = tmp_path / "album"
    (album / "2024").mkdir(parents=True)
    photo = Image.fromarray(degrade_case(real_photo(), "combined", seed=0))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees
    exif[0x010F] = "TestCam"
    photo.save(album / "2024" / "sideways.jpg", quality=92, exif=exif.tobytes())
    Image.fromarray(real_photo("chelsea.png")).convert("RGBA").save(album / "cat.png")
    Image.fromarray(real_photo("chelsea.png")).convert("L").save(album / "grey.png")
    (album / "notes.jpg").write_bytes(b"not a photo")
    before = {p: p.read_bytes() for p in album.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    common = ["--enhancer", str(enhancer_dir), "--data-dir", str(tmp_path / "nodata"), "-q"]

    code = run_cli(str(album), "--out", str(out), *common)
    err = capsys.readouterr().err
    assert code == 1 and "notes.jpg" in err and "1 of 4 photos not enhanced" in err
    assert {p: p.read_bytes() for p in album.rglob("*") if p.is_file()} == before  # originals untouched
    rotated = Image.open(out / "2024" / "sideways.jpg")
    assert rotated.size == (photo.height, photo.width)  # upright now
    assert rotated.getexif().get(0x0112, 1) == 1 and rotated.getexif()[0x010F] == "TestCam"
    assert Image.open(out / "cat.png").mode == "RGBA" and Image.open(out / "grey.png").mode == "L"
    assert not (out / "notes.jpg").exists() and not list(out.rglob(".*partial*"))

    stamp = (out / "cat.png").stat().st_mtime_ns
    code = run_cli(str(album / "cat.png"), "--out", str(out), *common)
    assert code == 1 and "exists" in capsys.readouterr().err and (out / "cat.png").stat().st_mtime_ns == stamp
    assert run_cli(str(album / "cat.png"), "--out", str(out), "--overwrite", "--format", "jpeg", *common) == 0
    assert Image.open(out / "cat.jpg").format == "JPEG"


def test_cli_refuses_bad_requests_in_one_line(enhancer_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    album = tmp_path / "album"
    album.mkdir()
    Image.fromarray(real_photo()).save(album / "a.png")
    common = ["--enhancer", str(enhancer_dir), "--data-dir", str(tmp_path / "nodata")]
    assert run_cli(str(album / "a.png"), "--out", str(album), *common) == 2
    assert "never go next to the originals" in capsys.readouterr().err
    assert run_cli(str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o"), *common) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli(str(album), "--out", str(tmp_path / "o"), "--enhancer", str(tmp_path)) == 2
    assert "holds no enhancer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(str(album), "--out", str(tmp_path / "o"), "--denoise", "2", *common)
    assert "between 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_progress_counts_tiles_and_a_cancel_stops_before_the_next(tiny_enhancer_run: Path, tmp_path: Path) -> None:
    from clipalbum.export.enhance_cli import main as export_main
    from clipalbum.server.enhance.runtime import EnhanceCancelled

    small = tmp_path / "small"
    assert export_main(["export", str(tiny_enhancer_run), str(small), "--tile", "64", "--no-int8"]) == 0
    enhancer, photo, seen = Enhancer(small), real_photo()[:100, :150], []
    unet = EnhanceOptions(denoise=1.0)  # the photo is clean: auto would not run the UNet
    enhancer.enhance(photo, unet, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]  # 2 rows x 3 columns of 64-px tiles
    calls: list[int] = []
    with pytest.raises(EnhanceCancelled):
        enhancer.enhance(photo, unet, progress=lambda done, total: calls.append(done), cancelled=lambda: len(calls) >= 2)
    assert calls == [1, 2]
