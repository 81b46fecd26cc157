"""The album scanner: walks album folders, decodes changed photos on a thread pool, embeds them in batches."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgspec
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from clipalbum.server.ann import AnnIndex
from clipalbum.server.bundle import ImageSpec
from clipalbum.server.containment import is_inside
from clipalbum.server.encoders import Encoders
from clipalbum.server.errors import BundleError, ImageDecodeError
from clipalbum.server.preprocess import PHOTO_SUFFIXES, decode_photo, open_photo, to_model_input
from clipalbum.server.schemas import ScanProgress
from clipalbum.server.store import Changes, FileState, PhotoFields, Store

log = logging.getLogger(__name__)

BATCH_SIZE = 32  # photos per transaction (and per ANN update), at most
# Photos per ONNX Runtime call. Measured with EfficientNet-Lite0 on 2 cores: CPU per photo grows with the
# batch (12.4 ms at 1, 13.4 at 4, 17.2 at 32: bigger activations fall out of cache), so keep it small.
# Indexing 12 MP JPEGs: 33 photos/s at 4, 29 at 16; 1 was a little faster still (36/s) on that machine.
INFER_BATCH = 4
CHECKPOINT_SECONDS = 60.0  # how often a long scan saves the vector index (a crash then rebuilds less)


def default_decode_threads() -> int:
    """Decoding threads: CLIPALBUM_DECODE_THREADS, else the core count (PIL and hashlib release the GIL)."""
    return int(os.environ.get("CLIPALBUM_DECODE_THREADS", "0")) or max(1, os.cpu_count() or 1)


class IndexSummary(msgspec.Struct):
    """What one scan did."""

    scanned: int = 0  # photo files found
    unchanged: int = 0  # same size and mtime (or same content): nothing to do
    added: int = 0  # new photos in the index
    updated: int = 0  # known paths whose content or model changed
    moved: int = 0  # moved or renamed files recognised by content (vector kept)
    removed: int = 0  # photos whose file is gone
    failed: int = 0  # files that are not readable photos: failing now, or failed before and unchanged since
    embedded: int = 0  # photos run through the image encoder
    seconds: float = 0.0
    stopped: bool = False  # ended early when asked to (the server stopping): the next scan does the rest

    def describe(self) -> str:
        rate = f" ({self.embedded / self.seconds:.1f} photos/s)" if self.embedded and self.seconds > 0 else ""
        return (f"scanned {self.scanned} photos in {self.seconds:.1f} s: {self.added} added, {self.updated} updated, "
                f"{self.moved} moved, {self.removed} removed, {self.failed} failed, {self.unchanged} unchanged; "
                f"{self.embedded} embedded{rate}" + ("; stopped early, the next scan goes on" if self.stopped else ""))


@dataclass(frozen=True)
class FoundFile:
    rel_path: str  # relative to the album root, "/"-separated (surrogate-escaped where not UTF-8)
    path: Path
    size: int
    mtime_ns: int


class AlbumWalk:
    """One scan's walk over the album folders, finding each photo file once.

    Hidden files and folders are skipped, and so are folders named in `skip` (real paths: the data
    directory). A symlink (to a file or a folder) is followed only when its real path is inside one of the
    `allowed` folders (the album roots' real paths), unless `follow_outside`. Links are followed after every
    album's real tree has been walked, and a file or folder met a second time (a link beside its target, a
    hard link, a folder linked twice, a loop) is left out: one photo is found once, by its real path when it
    has one (in whichever album that is), the same way every scan and whatever the order of the albums.
    A link into an album folder that is not there (unplugged) is treated like that album: what it led to is
    `kept`, not gone. Links that lead outside, loops, broken links to photo names and folders that cannot
    be read land in `problems` (shown in the status), not only in the log.
    """

    def __init__(self, allowed: Iterable[Path], skip: frozenset[str] = frozenset(),
                 follow_outside: bool = False) -> None:
        self.allowed = [os.path.realpath(folder) for folder in allowed]
        self.skip = skip
        self.follow_outside = follow_outside
        self.problems: list[tuple[str, str]] = []  # (path, what is wrong)
        self._folders: set[tuple[int, int]] = set()  # (st_dev, st_ino) of the folders walked
        # ... and of the photo files found that could be met again: hard-linked ones and those reached by a
        # link (a file with one link, walked in its own folder, is known by that folder: see _walked).
        self._files: set[tuple[int, int]] = set()
        self._kept: dict[int, set[str]] = {}  # root id -> rel_paths of links into an unplugged album

    def files(self, roots: Iterable[tuple[int, Path]]) -> Iterator[tuple[int, FoundFile]]:
        """(root id, photo file) under the album `roots`: each one's real tree, depth first in name order,
        then those reached by links (so a link into another album finds nothing that album has)."""
        links: deque[tuple[int, str, str]] = deque()  # (root id, path, rel_path) of the symlinks met, in order
        for root_id, root in roots:
            yield from self._tree(root_id, str(root), "", links)
        while links:
            yield from self._follow(*links.popleft(), links)

    def kept(self, root_id: int, rel_path: str) -> bool:
        """`rel_path` (under root `root_id`) was reached by a link into an album folder that is not there
        now: not found, but not gone either (its album is unplugged)."""
        kept = self._kept.get(root_id)
        if not kept:
            return False
        return rel_path in kept or any(rel_path[:i] in kept for i, c in enumerate(rel_path) if c == "/")

    def problem(self, path: str, what: str) -> None:
        log.warning("skipping %s: %s", path, what)
        self.problems.append((path, what))

    def _tree(self, root_id: int, top: str, top_prefix: str,
              links: deque[tuple[int, str, str]]) -> Iterator[tuple[int, FoundFile]]:
        stack = [(top, top_prefix)]
        while stack:
            folder, prefix = stack.pop()
            subfolders = []
            for entry in self._entries(folder):
                if entry.name.startswith("."):
                    continue
                rel = prefix + entry.name
                try:
                    if entry.is_symlink():
                        links.append((root_id, entry.path, rel))
                    elif entry.is_dir(follow_symlinks=False):
                        if os.path.realpath(entry.path) not in self.skip:
                            subfolders.append((entry.path, rel + "/"))
                    elif _is_photo_name(entry.name) and entry.is_file(follow_symlinks=False):
                        found = self._found(entry.path, rel, entry.stat(follow_symlinks=False))
                        if found is not None:
                            yield root_id, found
                except FileNotFoundError:  # deleted while we looked: the next scan won't see it either
                    continue
                except OSError as exc:
                    self.problem(entry.path, f"cannot read it: {exc.strerror or exc}")
            stack.extend(reversed(subfolders))  # depth first, in name order

    def _entries(self, folder: str) -> list[os.DirEntry[str]]:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in self._folders:
                return []
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
            self._folders.add((st.st_dev, st.st_ino))
            return entries
        except OSError as exc:  # unreadable, over-long (ENAMETOOLONG), vanished
            self.problem(folder, f"cannot read the folder: {exc.strerror or exc}")
            return []

    def _follow(self, root_id: int, path: str, rel: str,
                links: deque[tuple[int, str, str]]) -> Iterator[tuple[int, FoundFile]]:
        photo_name = _is_photo_name(rel)
        try:
            real = os.path.realpath(path, strict=True)
            st = os.stat(real)
        except FileNotFoundError:
            if (album := self._unplugged_album(path)) is not None:
                self._kept.setdefault(root_id, set()).add(rel)
                self.problem(path, f"symbolic link into the album folder {album}, which is not there; what it "
                                   "leads to stays indexed until it is back")
            elif photo_name:
                self.problem(path, f"broken symbolic link: its target {_link_target(path)} does not exist")
            return
        except OSError as exc:  # a loop (ELOOP), a target path too long, a folder on the way unreadable
            if exc.errno not in (errno.ELOOP, errno.ENAMETOOLONG):  # EIO, ESTALE...: a failing drive, not a gone one
                self._kept.setdefault(root_id, set()).add(rel)
                self.problem(path, f"cannot follow the symbolic link: {exc.strerror or exc}; what it leads to "
                                   "stays indexed until it can be read")
                return
            self.problem(path, f"cannot follow the symbolic link: {exc.strerror or exc}")
            return
        is_folder = stat.S_ISDIR(st.st_mode)
        if not (is_folder or (photo_name and stat.S_ISREG(st.st_mode))) or is_inside(real, self.skip):
            return
        if not self.follow_outside and not is_inside(real, self.allowed):
            self.problem(path, f"symbolic link to {real}, outside the album folders: not followed "
                               "(clipalbum index --follow-links-outside allows it)")
            return
        if is_folder:
            yield from self._tree(root_id, path, rel + "/", links)
        elif not self._walked(real) and (found := self._found(path, rel, st, by_link=True)) is not None:
            yield root_id, found

    def _unplugged_album(self, link: str) -> str | None:
        """The album folder (real path) that the broken `link` leads into, if that folder is not there."""
        target = os.path.realpath(link)  # as far as it resolves
        return next((album for album in self.allowed
                     if is_inside(target, [album]) and not os.path.isdir(album)), None)

    def _walked(self, real: str) -> bool:
        """The file at `real` (a real path) was found by walking its own folder."""
        folder, name = os.path.split(real)
        try:
            st = os.stat(folder)
        except OSError:
            return False
        return not name.startswith(".") and _is_photo_name(name) and (st.st_dev, st.st_ino) in self._folders

    def _found(self, path: str, rel: str, st: os.stat_result, by_link: bool = False) -> FoundFile | None:
        key = (st.st_dev, st.st_ino)
        if key in self._files:
            return None
        if by_link or st.st_nlink > 1:  # only these can be met again: keeps the set small
            self._files.add(key)
        return FoundFile(rel, Path(path), st.st_size, st.st_mtime_ns)


def _is_photo_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in PHOTO_SUFFIXES


def _link_target(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "(unreadable)"


def walk_album(root: Path, skip: frozenset[str] = frozenset(), follow_outside: bool = False) -> Iterator[FoundFile]:
    """Photo files under one album folder (see AlbumWalk; links may lead anywhere inside `root`)."""
    return (found for _, found in AlbumWalk([root], skip, follow_outside).files([(0, root)]))


HASH_CHUNK = 1 << 20  # bytes read at a time when hashing: the file is never held whole


def content_hash(f: BinaryIO) -> str:
    """Identifies a photo's bytes (sha256 of the whole file, read in chunks from the start), to recognise
    a moved or copied file without decoding it."""
    digest = hashlib.sha256()
    f.seek(0)
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    while n := f.readinto(buffer):
        digest.update(view[:n])
    return digest.hexdigest()


@dataclass
class WorkItem:
    """A file that needs reading: new, changed, or embedded by another model."""

    root_id: int
    rel_path: str
    path: Path
    size: int
    mtime_ns: int
    existing: FileState | None


@dataclass
class Prepared:
    """A work item after the decode thread: its hash and model input, or why it failed."""

    item: WorkItem
    size: int
    mtime_ns: int
    content_hash: str | None = None
    pixels: npt.NDArray[np.float32] | None = None
    width: int | None = None
    height: int | None = None
    taken_at: str | None = None
    error: str | None = None
    known_content: bool = False  # an embedded photo has the same bytes: no decoding was done


def prepare(item: WorkItem, spec: ImageSpec, known_hashes: frozenset[str] | set[str]) -> Prepared:
    """Identifies, hashes and (unless its content is already embedded) decodes one file. Never raises.

    A file is read only as far as it takes to decide: its header first, so a file that is not a photo
    (however big) is refused after a few kB; then the hash, streamed; then the decode, from the same file.
    """
    try:
        with open(item.path, "rb") as f:
            st = os.fstat(f.fileno())
            out = Prepared(item, st.st_size, st.st_mtime_ns)
            if st.st_size == 0:
                out.error = "empty file (0 bytes)"
            else:
                _identify_and_decode(f, out, spec, known_hashes)
    except OSError as exc:
        return Prepared(item, item.size, item.mtime_ns, error=f"cannot read the file: {exc.strerror or exc}")
    return out


def _identify_and_decode(f: BinaryIO, out: Prepared, spec: ImageSpec, known_hashes: frozenset[str] | set[str]) -> None:
    try:
        open_photo(f)  # the header alone: not an image, or over the pixel limit, ends here
        out.content_hash = content_hash(f)
        if out.content_hash in known_hashes:
            out.known_content = True
            return
        f.seek(0)
        photo = decode_photo(f, min_side=spec.size)
        out.pixels = to_model_input(photo.image, spec)
        out.width, out.height, out.taken_at = photo.width, photo.height, photo.taken_at
    except ImageDecodeError as exc:  # the reason alone: status lists it beside the path
        out.error = str(exc)
    except OSError:
        raise  # reading the file failed: prepare() records it as unreadable
    except Exception as exc:  # a decoder bug on one odd file must not stop the scan
        out.error = f"{exc.__class__.__name__}: {exc}"


def _prefetch(pool: ThreadPoolExecutor, fn: Callable[[WorkItem], Prepared], items: Iterable[WorkItem],
              depth: int) -> Iterator[Prepared]:
    """fn over items on the pool, in order, with at most `depth` in flight (bounded memory)."""
    pending: deque[Future[Prepared]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


STOP_CHECK_FILES = 256  # files listed between two checks of a scan's stop request while it walks the folders


@dataclass
class ScanPlan:
    work: list[WorkItem] = field(default_factory=list)
    missing: dict[int, FileState] = field(default_factory=dict)  # rows whose file was not found
    scanned: int = 0
    unchanged: int = 0
    still_failed: int = 0  # unchanged files that failed before: not retried, still counted as failed
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, what) met walking the folders
    stopped: bool = False  # the walk was cut short when asked to: `missing` and `problems` are not known


def plan_scan(store: Store, roots: list[tuple[int, Path]], model_id: str, reembed: bool,
              skip: frozenset[str], follow_links_outside: bool = False,
              should_stop: Callable[[], bool] = lambda: False) -> ScanPlan:
    """Compares the folders with the index: unchanged files (size + mtime) are not opened. A long walk (a
    big album on a network drive) asks `should_stop()` every STOP_CHECK_FILES files."""
    plan = ScanPlan()
    present = [(root_id, root) for root_id, root in roots if root.is_dir()]
    # Every album folder is allowed, an unplugged one too: a link into it is then kept, not gone.
    walk = AlbumWalk([root for _, root in roots], skip, follow_links_outside)
    for root_id, root in roots:
        if (root_id, root) not in present:
            # An unplugged drive must not empty the index: its photos stay until the folder is back.
            walk.problem(str(root), "the album folder is not there; its photos stay indexed until it is back")
    known = {root_id: store.file_states(root_id) for root_id, _ in present}
    for root_id, found in walk.files(present):
        if plan.scanned % STOP_CHECK_FILES == 0 and should_stop():
            plan.stopped = True
            return plan
        plan.scanned += 1
        state = known[root_id].pop(found.rel_path, None)
        if (state is not None and not reembed and state.size == found.size
                and state.mtime_ns == found.mtime_ns
                and (state.status == "failed" or state.model_id == model_id)):
            if state.status == "failed":
                plan.still_failed += 1
            else:
                plan.unchanged += 1
            continue
        plan.work.append(WorkItem(root_id, found.rel_path, found.path, found.size, found.mtime_ns, state))
    for root_id, root in present:
        if not root.is_dir():  # unplugged while it was listed: what wasn't listed yet is not gone
            log.warning("album folder %s went away during the scan; its photos stay indexed until it is back", root)
            continue
        plan.missing.update({state.id: state for rel_path, state in known[root_id].items()
                             if not walk.kept(root_id, rel_path)})
    plan.problems = walk.problems
    return plan


class Scan:
    """One run over the albums: plan, then decode ahead on threads while the encoder embeds batches."""

    def __init__(self, store: Store, ann: AnnIndex, encoders: Encoders, *, batch_size: int = BATCH_SIZE,
                 infer_batch: int = INFER_BATCH, decode_threads: int | None = None,
                 on_progress: Callable[[ScanProgress], None] = lambda p: None,
                 checkpoint: Callable[[], None] = lambda: None,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        """`should_stop()` is asked after each photo: True ends the scan early, keeping what it has done
        (the next scan picks up the rest)."""
        self.store, self.ann, self.encoders = store, ann, encoders
        self.should_stop = should_stop
        self.model_id = encoders.manifest.model_id
        self.embed_dim = encoders.manifest.embed_dim
        self.batch_size = batch_size
        self.infer_batch = infer_batch
        self.decode_threads = decode_threads or default_decode_threads()
        self.on_progress = on_progress
        self.checkpoint = checkpoint
        self.summary = IndexSummary()
        self.progress = ScanProgress()
        self._changes = Changes()
        self._batch: list[Prepared] = []
        self._missing: dict[int, FileState] = {}
        self._deleted: set[int] = set()
        self._last_checkpoint = time.monotonic()
        self.ann_in_sync = True  # False only between a commit and the ANN update that follows it

    def _report(self, **fields: object) -> None:
        self.progress = msgspec.structs.replace(self.progress, **fields)
        self.on_progress(self.progress)

    def run(self, roots: list[tuple[int, Path]], reembed: bool = False, skip: frozenset[str] = frozenset(),
            bar: bool = False, follow_links_outside: bool = False) -> IndexSummary:
        started = time.monotonic()
        self._report(running=True, phase="scanning", total=0, done=0, failed=0, started_at=time.time(),
                     finished_at=None, message="looking for new and changed photos")
        plan = plan_scan(self.store, roots, self.model_id, reembed, skip, follow_links_outside, self.should_stop)
        if plan.stopped:  # nothing changed yet: the next scan walks the folders again
            self.summary.stopped = True
            self._report(running=False, phase="done", finished_at=time.time(), message=self.summary.describe())
            return self.summary
        self.store.set_walk_problems(plan.problems)  # this scan's, replacing the last one's (if they differ)
        self.summary.scanned, self.summary.unchanged = plan.scanned, plan.unchanged
        self.summary.failed = plan.still_failed  # so a rerun's count agrees with `clipalbum status`
        self._missing = dict(plan.missing)
        # Hashes already embedded (a moved or copied file needs no decoding); not read when nothing changed.
        known = set() if reembed or not plan.work else self.store.embedded_hashes(self.model_id)
        log.info("%d photos found, %d unchanged, %d failed before and unchanged, %d to read, %d gone",
                 plan.scanned, plan.unchanged, plan.still_failed, len(plan.work), len(plan.missing))
        self._report(phase="embedding", total=len(plan.work), message=f"{len(plan.work)} photos to read")

        spec = self.encoders.manifest.image
        with tqdm(total=len(plan.work), unit="photo", desc="indexing", disable=not (bar and plan.work)) as pbar, \
                ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode") as pool:
            try:
                for prepared in _prefetch(pool, lambda item: prepare(item, spec, known), plan.work,
                                          depth=self.batch_size * 2):
                    self._take(prepared, spec)
                    pbar.update(1)
                    self._report(done=self.progress.done + 1, failed=self.summary.failed)
                    if self.should_stop():
                        self.summary.stopped = True
                        break
                self._embed_batch()  # the last, partial batch
                self._flush()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

        gone = [photo_id for photo_id in self._missing if photo_id not in self._deleted]
        if gone and not self.summary.stopped:  # (a stopped scan may not have met a moved file's new place)
            self._changes.deletes.extend(gone)
            self.summary.removed += len(gone)
            self._flush()
        self.summary.seconds = round(time.monotonic() - started, 3)
        self._report(running=False, phase="done", finished_at=time.time(), message=self.summary.describe())
        return self.summary

    def _take(self, p: Prepared, spec: ImageSpec) -> None:
        """Turns one prepared file into index changes (or into a slot in the next encoder batch)."""
        existing = p.item.existing
        if p.error is not None and p.content_hash is None and not os.path.lexists(p.item.path):
            # Gone since the folder was listed (deleted, or the drive unplugged): not a broken photo. Its row,
            # if any, stays as it was; the next scan finds the file again or removes the row.
            log.warning("skipping %s: it went away during the scan", p.item.path)
            return
        if p.error is not None:
            log.warning("skipping %s: %s", p.item.path, p.error)
            self.summary.failed += 1
            self._changes.writes.append((existing.id if existing else None, PhotoFields(
                p.item.root_id, p.item.rel_path, p.size, p.mtime_ns, p.content_hash, error=p.error)))
        elif p.known_content:
            if not self._reuse(p):
                # Its twin was removed earlier in this scan: decode after all.
                self._take(prepare(p.item, spec, frozenset()), spec)
                return
        else:
            self._batch.append(p)
            if len(self._batch) >= self.infer_batch:  # embed right away: the decode threads keep going
                self._embed_batch()
        if len(self._changes.writes) + len(self._changes.copies) + len(self._changes.moves) >= self.batch_size:
            self._flush()

    def _reuse(self, p: Prepared) -> bool:
        """A file whose bytes are already embedded: touched, moved, or a copy. False if no twin is left."""
        existing = p.item.existing
        item = p.item
        if (existing is not None and existing.content_hash == p.content_hash and existing.status == "indexed"
                and existing.model_id == self.model_id):
            self._changes.moves.append((existing.id, item.root_id, item.rel_path, p.size, p.mtime_ns))
            self.summary.unchanged += 1  # only its mtime changed
            return True
        twins = [i for i in self.store.embedded_by_hash(p.content_hash or "", self.model_id)
                 if i not in self._deleted]
        gone = [i for i in twins if i in self._missing]
        if gone:  # moved or renamed: the old row takes the new path and keeps its id and vector
            if existing is not None:
                self._changes.deletes.append(existing.id)
                self._deleted.add(existing.id)
                self.summary.removed += 1
            self._missing.pop(gone[0])
            self._changes.moves.append((gone[0], item.root_id, item.rel_path, p.size, p.mtime_ns))
            self.summary.moved += 1
            return True
        if twins:  # a copy of an embedded photo: same vector
            self._changes.copies.append((existing.id if existing else None, twins[0], PhotoFields(
                item.root_id, item.rel_path, p.size, p.mtime_ns, p.content_hash)))
            self._count_write(existing)
            return True
        return False

    def _count_write(self, existing: FileState | None) -> None:
        if existing is None:
            self.summary.added += 1
        else:
            self.summary.updated += 1

    def _embed_batch(self) -> None:
        if not self._batch:
            return
        vectors = self.encoders.image.encode(np.stack([p.pixels for p in self._batch]))  # (B, 3, S, S) -> (B, D)
        if vectors.shape[1] != self.embed_dim:
            raise BundleError(f"the image encoder returns {vectors.shape[1]}-d vectors but the manifest says "
                              f"{self.embed_dim}; re-export the bundle")
        for p, vector in zip(self._batch, vectors):
            existing = p.item.existing
            self._changes.writes.append((existing.id if existing else None, PhotoFields(
                p.item.root_id, p.item.rel_path, p.size, p.mtime_ns, p.content_hash, p.width, p.height,
                p.taken_at, None, self.model_id, vector)))
            self._count_write(existing)
        self.summary.embedded += len(self._batch)
        self._batch = []

    def _flush(self) -> None:
        """Commits the pending changes in one transaction, then makes the ANN index follow."""
        if not self._changes:
            return
        self.ann_in_sync = False
        added, removed = self.store.apply(self._changes)
        self._changes = Changes()
        self.ann.remove(removed)
        if added:
            self.ann.add([i for i, _ in added], np.stack([v for _, v in added]))
        self.ann_in_sync = True
        if time.monotonic() - self._last_checkpoint > CHECKPOINT_SECONDS:
            self.checkpoint()
            self._last_checkpoint = time.monotonic()
