"""The vector index (server/ann.py): exact scans for small albums, inverted lists beyond, its file."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from clipalbum.server import ann as ann_module
from clipalbum.server.ann import AnnIndex, list_count


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    return unit(rng.standard_normal((n, dim)))


def album(rng: np.random.Generator, n: int, dim: int = 64, scenes: int = 120) -> np.ndarray:
    """Photos that come in scenes (bursts and series of one subject), as real albums do."""
    centres = rng.standard_normal((scenes, dim))
    return unit(centres[rng.integers(0, scenes, n)] + rng.standard_normal((n, dim)))


def text_like(rng: np.random.Generator, photos: np.ndarray, n: int) -> np.ndarray:
    """Queries offset from the photos by one common direction, like the image-text modality gap."""
    gap = unit(rng.standard_normal(photos.shape[1]))
    return unit(photos[rng.choice(len(photos), n, replace=False)] + 0.8 * gap)


def recall(ann: AnnIndex, photos: np.ndarray, queries: np.ndarray, k: int = 20) -> float:
    """recall@k after the exact re-rank the library does, against an exact scan; photo i has key i + 1."""
    found = 0
    for q in queries:
        truth = set((np.argsort(-(photos @ q))[:k] + 1).tolist())
        ids = np.asarray(ann.search(q, k + 10)[0])
        ranked = ids[np.argsort(-(photos[ids - 1] @ q))][:k]
        found += len(truth & set(ranked.tolist()))
    return found / (k * len(queries))


def build(photos: np.ndarray, first_key: int = 1) -> AnnIndex:
    keys = np.arange(first_key, first_key + len(photos), dtype=np.uint64)
    return AnnIndex.build(photos.shape[1], [(keys, photos)])


@pytest.fixture()
def small_exact_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lists from 500 photos on, so that tests build them from a few thousand."""
    monkeypatch.setattr(ann_module, "EXACT_SEARCH_MAX", 500)


def test_finds_the_nearest_and_replaces_updated_vectors() -> None:
    vecs = random_unit(np.random.default_rng(6), 200)
    ann = AnnIndex(16)
    ann.add(np.arange(1, 201), vecs)
    ids, scores = ann.search(vecs[41], 5)
    assert ids[0] == 42 and scores[0] == pytest.approx(1.0, abs=1e-2)
    ann.add([42], -vecs[41:42])  # an updated photo keeps its key
    assert len(ann) == 200
    assert 42 not in ann.search(vecs[41], 5)[0]
    ann.remove([1, 2, 1000])  # 1000 was never there
    assert len(ann) == 198 and ann.checksum() == (198, sum(range(3, 201)))
    assert ann.removed == 3  # the replaced vector of 42, then 1 and 2
    ann.add([1], vecs[:1])  # a removed photo comes back
    assert ann.search(vecs[0], 1)[0] == [1] and len(ann) == 199


def test_a_key_given_twice_keeps_its_last_vector_and_older_ids_can_come_back() -> None:
    vecs = random_unit(np.random.default_rng(2), 6)
    ann = AnnIndex(16)
    ann.add([10, 11, 10], vecs[:3])
    assert len(ann) == 2 and ann.search(vecs[2], 1)[0] == [10]
    ann.add([3, 20], vecs[3:5])  # 3 sorts before the keys held: the key map merges instead of appending
    assert sorted(ann.keys().tolist()) == [3, 10, 11, 20]
    assert ann.search(vecs[3], 1)[0] == [3]
    np.testing.assert_allclose(ann.approximate_vectors([3, 20]), vecs[3:5], atol=1e-2)
    with pytest.raises(KeyError):
        ann.approximate_vectors([4])


def test_empty_index_searches_to_nothing() -> None:
    assert AnnIndex(16).search(np.ones(16, dtype=np.float32), 10) == ([], [])


def test_lists_grow_with_the_album() -> None:
    assert list_count(ann_module.EXACT_SEARCH_MAX) == 1
    assert list_count(100_000) == 1024 and list_count(1_000_000) == 4096


def test_saves_atomically_and_loads_back(tmp_path: Path) -> None:
    vecs = random_unit(np.random.default_rng(7), 50)
    ann = build(vecs)
    ann.remove([5])  # a dead slot is not written
    path = tmp_path / "vectors.ivf"
    ann.save(path)
    assert not (tmp_path / "vectors.ivf.tmp").exists()
    loaded = AnnIndex.load(path, 16)
    assert loaded is not None and loaded.checksum() == ann.checksum() and loaded.removed == 0
    assert loaded.search(vecs[9], 1)[0] == [10]


def test_a_missing_damaged_or_other_dimension_file_means_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "vectors.ivf"
    assert AnnIndex.load(path, 16) is None
    build(random_unit(np.random.default_rng(8), 30)).save(path)
    whole = path.read_bytes()
    assert AnnIndex.load(path, 32) is None
    path.write_bytes(whole[:-7])  # truncated
    assert AnnIndex.load(path, 16) is None
    flipped = bytearray(whole)
    flipped[-100] ^= 0x40  # one bit of one code: the checksum catches it
    path.write_bytes(bytes(flipped))
    assert AnnIndex.load(path, 16) is None
    path.write_bytes(b"garbage" * 10)
    assert AnnIndex.load(path, 16) is None
    path.write_bytes(whole)
    assert AnnIndex.load(path, 16) is not None


def test_albums_up_to_the_exact_limit_get_every_true_neighbour(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    photos = album(rng, 4000)
    queries = text_like(rng, photos, 30)
    ann = build(photos)
    assert len(ann._centroids) == 1  # no lists: every code is scored
    assert recall(ann, photos, queries) >= 0.995  # int8 codes may swap a near tie the re-rank can't recover

    monkeypatch.setattr(ann_module, "EXACT_SEARCH_MAX", 500)
    listed = build(photos)
    assert len(listed._centroids) == list_count(4000) == 256
    listed.probes = 2
    assert recall(listed, photos, queries) < 0.95  # two lists of 256 miss neighbours...
    listed.probes = None
    assert recall(listed, photos, queries) >= 0.98  # ...the shipped probes find nearly all


@pytest.mark.usefixtures("small_exact_limit")
def test_lists_survive_saving_and_take_new_photos(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    photos = album(rng, 3000)
    queries = text_like(rng, photos, 20)
    ann = build(photos[:2000])
    ann.save(tmp_path / "vectors.ivf")
    loaded = AnnIndex.load(tmp_path / "vectors.ivf", 64)
    assert loaded is not None
    np.testing.assert_array_equal(loaded._centroids, ann._centroids)
    for q in queries[:5]:
        assert loaded.search(q, 30) == ann.search(q, 30)
    loaded.add(np.arange(2001, 3001), photos[2000:])  # each new photo goes to its nearest list
    assert int(loaded._fill.sum()) == 3000 and len(loaded) == 3000
    assert recall(loaded, photos, queries) >= 0.95


@pytest.mark.usefixtures("small_exact_limit")
def test_maintain_compacts_removals_and_retrains_a_grown_index(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    photos = album(rng, 6000)
    queries = text_like(rng, photos, 20)
    ann = build(photos[:1000])
    lists = len(ann._centroids)
    assert lists == list_count(1000) > 1 and not ann.maintain()  # nothing to do

    ann.remove(range(1, 301))
    monkeypatch.setattr(ann_module, "COMPACT_MIN_REMOVED", 0)
    before = [ann.search(q, 30) for q in queries[:5]]
    assert ann.maintain()  # 300 of 1000 removed: compacted, the same lists kept
    assert ann.removed == 0 and ann._used == len(ann) == 700 and len(ann._centroids) == lists
    assert [ann.search(q, 30) for q in queries[:5]] == before

    ann.add(np.arange(1001, 6001), photos[1000:])
    assert ann.maintain() and len(ann._centroids) == list_count(5700) > lists  # outgrew its lists
    assert ann.checksum() == (5700, sum(range(301, 6001)))
    kept = photos.copy()
    kept[:300] = -kept[:300]  # the removed photos: far from every query, so never among the truth
    assert recall(ann, kept, queries) >= 0.95


@pytest.mark.usefixtures("small_exact_limit")
def test_a_wide_search_reaches_beyond_the_probed_lists() -> None:
    # A date-window search asks for many candidates and keeps those in the window: it must get them.
    photos = album(np.random.default_rng(9), 2000)
    ann = build(photos)
    ids, scores = ann.search(photos[0], 2000)
    assert sorted(ids) == list(range(1, 2001))
    assert scores == sorted(scores, reverse=True)


@pytest.mark.usefixtures("small_exact_limit")
def test_searches_go_on_while_photos_are_added_and_the_lists_rebuilt() -> None:
    rng = np.random.default_rng(10)
    photos = album(rng, 4000)
    ann = build(photos[:1000])
    problems: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        while not stop.is_set():
            try:
                ids, _ = ann.search(photos[int(rng.integers(0, 1000))], 30)
                assert len(ids) == 30 and all(1 <= i <= 4000 for i in ids)
            except BaseException as exc:  # noqa: BLE001 - reported below
                problems.append(exc)
                return

    searcher = threading.Thread(target=search)
    searcher.start()
    try:
        for start in range(1000, 4000, 250):
            ann.add(np.arange(start + 1, start + 251), photos[start:start + 250])
            ann.remove([start // 2])
        ann.maintain()
    finally:
        stop.set()
        searcher.join()
    assert not problems, problems[0]
    assert len(ann) == 4000 - 12


def test_probed_rows_score_the_same_in_chunks_as_at_once() -> None:
    rng = np.random.default_rng(7)
    codes = rng.integers(-127, 128, (3000, 32)).astype(np.int8)
    scales = rng.uniform(0.005, 0.01, 3000).astype(np.float32)
    rows = rng.permutation(3000)[:2 * ann_module.SCAN_CHUNK + 77]  # two whole chunks and a part
    query = random_unit(rng, 1, 32)[0]
    found, scores = ann_module._scan_rows(codes, scales, rows, query, 25)
    expected = (codes[rows].astype(np.float64) @ query) * scales[rows]
    best = np.argsort(-expected)[:25]
    assert found.tolist() == rows[best].tolist()
    np.testing.assert_allclose(scores, expected[best], rtol=1e-5)
