"""`clipalbum index`, `search` and `status` through server.cli.main, as a user types them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipalbum.server.cli import main
from tests.conftest import SAMPLE_PHOTOS


@pytest.fixture()
def cli(tmp_path: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture):
    """Runs `clipalbum ARGS --data-dir D --model TINY`; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--data-dir", str(tmp_path / "data"), "--model", str(tiny_bundle)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_index_then_search_status_similar_and_by_image(cli, sample_album: Path) -> None:
    code, out, _ = cli("index", str(sample_album), "-q")
    assert code == 0 and f"{len(SAMPLE_PHOTOS)} added" in out

    code, out, _ = cli("index", "--json", "-q")  # the album is remembered
    summary = json.loads(out)
    assert code == 0 and summary["unchanged"] == len(SAMPLE_PHOTOS) and summary["embedded"] == 0

    code, out, err = cli("search", "a cat sitting", "--k", "3")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3 and "3 results" in err
    assert all(Path(line.split(maxsplit=2)[2]).is_file() for line in lines)  # id, score, then the full path
    ids = [int(line.split()[0]) for line in lines]
    code, out, _ = cli("search", "--similar", str(ids[0]), "--k", "3")  # the printed id is the one it takes
    assert code == 0 and str(ids[0]) not in [line.split()[0] for line in out.splitlines()]

    code, out, _ = cli("search", "a rocket", "--k", "5", "--json")
    response = json.loads(out)
    assert code == 0 and len(response["results"]) == 5
    assert {"id", "path", "score", "width", "height", "taken_at", "root"} <= set(response["results"][0])
    first = response["results"][0]["id"]

    code, out, _ = cli("search", "--similar", str(first), "--k", "20", "--json")
    similar = json.loads(out)["results"]
    assert code == 0 and len(similar) == len(SAMPLE_PHOTOS) - 1 and first not in [h["id"] for h in similar]

    code, out, _ = cli("search", "--image", str(sample_album / "2023" / "coffee.png"), "--json")
    assert code == 0 and json.loads(out)["results"][0]["path"] == "2023/coffee.png"

    code, out, _ = cli("status", "--json")
    status = json.loads(out)
    assert code == 0 and (status["indexed"], status["failed"]) == (len(SAMPLE_PHOTOS), 0)
    assert status["roots"] == [str(sample_album.resolve())]


def test_status_lists_failed_files(cli, sample_album: Path) -> None:
    (sample_album / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert cli("index", str(sample_album), "-q")[0] == 0
    code, out, _ = cli("status")
    assert code == 0 and f"indexed {len(SAMPLE_PHOTOS)}, pending 0, failed 1" in out
    assert "broken.jpg" in out
    code, out, _ = cli("index", "-q")  # a rerun: the broken file is still broken, and still counted as failed
    assert code == 0 and ", 1 failed, " in out and "0 embedded" in out


def test_status_says_how_many_failures_it_leaves_out(cli, sample_album: Path) -> None:
    for i in range(5):
        (sample_album / f"broken-{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated %d" % i)
    assert cli("index", str(sample_album), "-q")[0] == 0
    code, out, _ = cli("status", "--max-errors", "2")
    assert code == 0 and out.count("failed: ") == 2
    assert "... and 3 more failed files (clipalbum status --max-errors 5 lists them)" in out
    code, out, _ = cli("status", "--json", "--max-errors", "2")
    status = json.loads(out)
    assert status["failed"] == 5 and len(status["errors"]) == 2 and status["errors_truncated"] is True
    code, out, _ = cli("status")
    assert out.count("failed: ") == 5 and "more failed files" not in out
    assert json.loads(cli("status", "--json")[1])["errors_truncated"] is False


@pytest.mark.parametrize("args, message", [
    (("search", ""), "query is empty"),
    (("search", "cat", "--k", "0"), "k must be between 1 and 200"),
    (("search", "--similar", "999"), "no photo with id 999"),
])
def test_bad_searches_exit_2_with_a_message(cli, sample_album: Path, args: tuple, message: str) -> None:
    cli("index", str(sample_album), "-q")
    code, out, err = cli(*args)
    assert code == 2 and message in err and out == ""


def test_a_missing_album_folder_exits_2_with_a_message(cli, tmp_path: Path) -> None:
    code, _, err = cli("index", str(tmp_path / "nowhere"))
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("args, message", [
    (("search", "--image", "/nonexistent/query.jpg"), "does not exist"),
    (("search", "--image", "/"), "is a folder"),
    (("search", "cat", "--similar", "3"), "a text query and --similar were both given"),
    (("search", "cat", "--image", "/x.jpg"), "a text query and --image were both given"),
    (("search", "--similar", "3", "--image", "/x.jpg"), "--similar and --image were both given"),
])
def test_user_mistakes_end_in_one_line_and_exit_2(cli, args: tuple, message: str) -> None:
    code, out, err = cli(*args)
    assert code == 2 and message in err and out == ""
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_empty_index_says_to_run_index(cli) -> None:
    code, out, err = cli("search", "a cat")
    assert code == 0 and out == "" and "run `clipalbum index FOLDER` first" in err


def test_a_reader_that_stops_early_is_no_error(tmp_path: Path, tiny_bundle: Path, sample_album: Path) -> None:
    # `clipalbum search ... --json | head -c 1`: the pipe closes before the output is written.
    import subprocess
    import sys

    base = [sys.executable, "-m", "clipalbum.server.cli", "--data-dir", str(tmp_path / "data"), "--model", str(tiny_bundle)]
    assert main(["index", str(sample_album), "-q", *base[3:]]) == 0
    proc = subprocess.Popen([*base[:3], "search", "a cat", "--json", *base[3:]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_non_image_query_file_exits_2(cli, sample_album: Path, tmp_path: Path) -> None:
    cli("index", str(sample_album), "-q")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    code, _, err = cli("search", "--image", str(notes))
    assert code == 2 and "not a supported image" in err


def test_status_tells_walk_problems_from_failed_files_and_refuses_a_negative_limit(cli, sample_album: Path) -> None:
    for i in range(3):
        (sample_album / f"broken-{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated %d" % i)
    (sample_album / "loop-1.jpg").symlink_to("loop-1.jpg")
    (sample_album / "loop-2.jpg").symlink_to("loop-2.jpg")
    assert cli("index", str(sample_album), "-q")[0] == 0
    code, out, _ = cli("status", "--max-errors", "1")
    assert code == 0 and out.count("skipped: ") == 1 and "failed: " not in out
    assert "... and 1 more folder or link problem and 3 more failed files " \
           "(clipalbum status --max-errors 5 lists them)" in out
    code, out, _ = cli("status", "--max-errors", "3")
    assert out.count("skipped: ") == 2 and out.count("failed: ") == 1
    assert "... and 2 more failed files (" in out
    code, out, _ = cli("status")
    assert out.count("skipped: ") == 2 and out.count("failed: ") == 3 and "more" not in out
    with pytest.raises(SystemExit) as exit_info:  # -1 used to drop the last problem and list every failure
        cli("status", "--max-errors", "-1")
    assert exit_info.value.code == 2
