"""Query arithmetic ("beach" + "sunset" - "people") and the relevance cut-off (min_score), in the Library,
the CLI and the API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from litestar.testing import TestClient

from clipalbum.server.app import create_app
from clipalbum.server.cli import main, query_text
from clipalbum.server.errors import InvalidQueryError
from clipalbum.server.library import Library
from clipalbum.server.query_terms import parse_terms
from tests.conftest import SAMPLE_PHOTOS


@pytest.mark.parametrize(("query", "terms"), [
    ("a cat", [(1.0, "a cat")]),
    ('"beach" + "sunset" - "people"', [(1.0, "beach"), (1.0, "sunset"), (-1.0, "people")]),
    ('  "kids playing"  -  "snow" ', [(1.0, "kids playing"), (-1.0, "snow")]),
    ('- "people"', [(-1.0, "people")]),
    ('"a red car"', [(1.0, "a red car")]),
    ('the "red" car', [(1.0, 'the "red" car')]),  # quotes inside plain words are words
    ('"the "red" car"', [(1.0, '"the "red" car"')]),
])
def test_parse_terms(query: str, terms: list) -> None:
    assert parse_terms(query) == terms


@pytest.mark.parametrize(("query", "message"), [
    ('"beach" "sunset"', r"put \+ or -"),
    ('"beach" + ""', "empty"),
])
def test_malformed_arithmetic_is_refused(query: str, message: str) -> None:
    with pytest.raises(InvalidQueryError, match=message):
        parse_terms(query)


@pytest.mark.parametrize(("words", "query"), [
    (["beach", "+", "sunset", "-", "people"], '"beach" + "sunset" - "people"'),
    (["kids", "playing", "+", "beach"], '"kids playing" + "beach"'),
    (["a", "cat"], "a cat"),
    (["a cat on a mat"], "a cat on a mat"),
    ([], None),
])
def test_the_shells_words_become_one_query(words: list[str], query: str | None) -> None:
    assert query_text(words) == query


def test_arithmetic_searches_for_the_normalised_sum(library: Library) -> None:
    cat, rocket, person = library.encoders.text.encode(["a cat", "a rocket", "a person"])
    wanted = cat + rocket - person
    wanted /= np.linalg.norm(wanted)
    response = library.search_text('"a cat" + "a rocket" - "a person"', k=len(SAMPLE_PHOTOS))
    assert response.query == '"a cat" + "a rocket" - "a person"'
    scores = {hit.id: hit.score for hit in response.results}
    stored = {row.id: float(row.vector @ wanted) for row in library.store.vector_rows(list(scores), library.model_id)}
    assert scores.keys() == stored.keys()
    assert all(abs(scores[i] - stored[i]) < 1e-4 for i in scores)
    assert [hit.id for hit in response.results] == sorted(stored, key=stored.get, reverse=True)
    with pytest.raises(InvalidQueryError, match="cancel"):
        library.search_text('"a cat" - "a cat"')


@pytest.mark.parametrize("sort", ["relevance", "date"])
def test_min_score_leaves_out_weaker_matches(library: Library, sort: str) -> None:
    everything = library.search_text("a cat", k=len(SAMPLE_PHOTOS), sort=sort).results
    scores = sorted(hit.score for hit in everything)
    cut = (scores[len(scores) // 2] + scores[len(scores) // 2 - 1]) / 2  # half of them above
    kept = library.search_text("a cat", k=len(SAMPLE_PHOTOS), sort=sort, min_score=cut).results
    assert 0 < len(kept) < len(everything) and all(hit.score >= cut for hit in kept)
    assert {hit.id for hit in kept} == {hit.id for hit in everything if hit.score >= cut}
    photo = everything[0].id
    assert all(hit.score >= cut for hit in library.similar(photo, sort=sort, min_score=cut).results)
    with pytest.raises(InvalidQueryError, match="min_score"):
        library.search_text("a cat", min_score=1.5)


def test_the_api_and_the_cli_take_both(library: Library, tmp_path: Path, tiny_bundle: Path, sample_album: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    with TestClient(create_app(library, web_dir=tmp_path / "no-web", background_index=False)) as client:
        every = client.get("/api/search", params={"q": '"a cat" + "a rocket"', "k": 50}).json()["results"]
        assert len(every) == len(SAMPLE_PHOTOS)
        top = (every[0]["score"] + every[1]["score"]) / 2  # only the best one scores above it
        strong = client.get("/api/search", params={"q": '"a cat" + "a rocket"', "k": 50, "min_score": top}).json()
        assert [hit["id"] for hit in strong["results"]] == [every[0]["id"]]
        assert client.get("/api/search", params={"q": "a cat", "min_score": 2}).status_code == 400
        assert client.get("/api/search", params={"q": '"a" "b"'}).status_code == 400
    code = main(["search", "a", "cat", "+", "a", "rocket", "--json", "--min-score", str(top),
                 "--data-dir", str(library.paths.root), "--model", str(tiny_bundle)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["query"] == '"a cat" + "a rocket"' and [h["id"] for h in out["results"]] == [every[0]["id"]]
