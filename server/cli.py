"""The `clipalbum` command line: model build|list|info|remove, index, search, status, serve, service, token, eval,
demo, db migrate; train, export and enhance hand over to their own modules."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from clipalbum.server.diskerrors import storage_problem
from clipalbum.server.errors import ClipalbumError
from clipalbum.server.pathnames import for_terminal
from clipalbum.server.settings import DataPaths, data_paths

if TYPE_CHECKING:
    from clipalbum.server.schemas import StatusResponse


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="index and thumbnails (default: $CLIPALBUM_DATA_DIR "
                   "or $XDG_DATA_HOME/clipalbum)")
    p.add_argument("--model", help="model bundle folder or cached model id (default: $CLIPALBUM_MODEL, else the "
                   "default model in the model cache)")
    p.add_argument("--database", metavar="URL", help="keep the index in this PostgreSQL database (with pgvector; "
                   "the postgres extra) instead of the data directory (default: $CLIPALBUM_DATABASE)")


def _paths(args: argparse.Namespace) -> DataPaths:
    """The data directory and database the command's options (or the environment) name."""
    return data_paths(args.data_dir, getattr(args, "database", None))


def _add_follow_links(p: argparse.ArgumentParser) -> None:
    p.add_argument("--follow-links-outside", action=argparse.BooleanOptionalAction, default=None,
                   help="follow symlinks to photos and folders outside the album folders, and serve them "
                   "(remembered by the data directory; --no-follow-links-outside turns it off again)")


def _open_library(args: argparse.Namespace, roots: list[str] | None = None):
    from clipalbum.server.library import Library

    return Library.open(_paths(args), model=args.model, roots=roots,
                        follow_links_outside=getattr(args, "follow_links_outside", None))


def cmd_model_build(args: argparse.Namespace) -> int:
    from clipalbum.server.model_cache import DEFAULT_MODEL_ID, cached_bundle
    from clipalbum.server.model_resolver import build_default_bundle

    out = Path(args.out) if args.out else cached_bundle(DEFAULT_MODEL_ID)
    bundle = build_default_bundle(out, force=args.force, progress=True)
    print(f"model bundle ready: {for_terminal(str(bundle))}")
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from clipalbum.server.bundle import read_manifest, verify_bundle
    from clipalbum.server.model_cache import folder_size, users_of
    from clipalbum.server.model_resolver import named_bundle, resolve_bundle

    paths = data_paths(args.data_dir)
    bundle = named_bundle(args.bundle) if args.bundle else resolve_bundle(paths, args.model, build_if_missing=False)
    manifest = read_manifest(bundle)
    verify_bundle(bundle, manifest)  # every file against its recorded checksum
    used_by = users_of(bundle)
    if args.json:
        print(msgspec.json.encode({"path": str(bundle), "size_bytes": folder_size(bundle), "verified": True,
                                   "used_by": used_by, "manifest": manifest}).decode())
        return 0
    print(f"{manifest.model_id} ({manifest.embed_dim}-d) at {for_terminal(str(bundle))}")
    print(f"size {folder_size(bundle) / 1e6:.1f} MB; checksums verified ({len(manifest.sha256)} files)")
    if manifest.description:
        print(f"about: {manifest.description}")
    print(f"image: {manifest.image.file} ({manifest.image.size} px, {manifest.image.quantization}); "
          f"text: {manifest.text.file} ({manifest.text.quantization})")
    for name, digest in sorted(manifest.sha256.items()):
        print(f"  sha256 {digest}  {for_terminal(name)}")
    if manifest.metrics:
        print("recorded figures: " + ", ".join(f"{k} {v:g}" for k, v in sorted(manifest.metrics.items())))
    print("used by: " + (", ".join(for_terminal(d) for d in used_by) or "no data directory on record"))
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from clipalbum.server.model_cache import cache_dir, cached_bundles, uses

    bundles = cached_bundles()
    in_cache = {b.path.resolve() for b in bundles}
    elsewhere = [u for u in uses() if Path(u.bundle) not in in_cache]  # --model folders, DATA/models/default
    if args.json:
        print(msgspec.json.encode({"cache": str(cache_dir()), "bundles": [
            {"model_id": b.model_id, "path": str(b.path), "size_bytes": b.size_bytes, "used_by": b.used_by}
            for b in bundles], "outside_cache": elsewhere}).decode())
        return 0
    print(f"model cache: {for_terminal(str(cache_dir()))}")
    for b in bundles:
        users = ", ".join(for_terminal(d) for d in b.used_by) or "no data directory on record"
        print(f"  {b.model_id}  {b.size_bytes / 1e6:.1f} MB  used by: {users}")
    if not bundles:
        print("  (empty: `clipalbum model build` or the first `clipalbum index` builds the default)")
    for use in elsewhere:
        print(f"{for_terminal(use.data_dir)} uses {use.model_id} at {for_terminal(use.bundle)}")
    return 0


def cmd_model_remove(args: argparse.Namespace) -> int:
    from clipalbum.server.model_cache import remove_cached

    removed = remove_cached(args.model_id, force=args.force)
    print(f"removed {for_terminal(str(removed))}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    with closing(_open_library(args, roots=args.paths)) as library:
        summary = library.index(progress=not args.quiet, reembed=args.reembed)
    print(msgspec.json.encode(summary).decode() if args.json else summary.describe())
    return 0


def _query_photo(name: str) -> Path:
    """The photo file `search --image` names, or a ClipalbumError that says what is wrong with it."""
    path = Path(name).expanduser()
    if not path.exists():
        raise ClipalbumError(f"{for_terminal(name)} does not exist; give the photo file to search by")
    if path.is_dir():
        raise ClipalbumError(f"{for_terminal(name)} is a folder; give one photo file to search by")
    return path


def query_text(words: list[str]) -> str | None:
    """The search's words as one query: `kids playing + beach - people` (the shell's split of rclip-style
    arithmetic) becomes '"kids playing" + "beach" - "people"'; anything else is joined with spaces."""
    if not words:
        return None
    if len(words) > 1 and any(w in ("+", "-") for w in words):
        parts: list[str] = []
        for word in words:  # consecutive words are one description: kids playing + beach
            if word in ("+", "-") or not parts or parts[-1] in ("+", "-"):
                parts.append(word)
            else:
                parts[-1] += f" {word}"
        return " ".join(p if p in ("+", "-") else f'"{p.strip(chr(34))}"' for p in parts)
    return " ".join(words)


def cmd_search(args: argparse.Namespace) -> int:
    args.query = query_text(args.query)
    given = [what for what, value in (("a text query", args.query), ("--similar", args.similar),
                                      ("--image", args.image)) if value is not None]
    if len(given) > 1:
        raise ClipalbumError(f"search by one thing at a time: {' and '.join(given)} were both given")
    query_photo = _query_photo(args.image) if args.image is not None else None
    if _no_model_yet(args) and _indexed_photos(_paths(args)) == 0:
        # Nothing to find: say so rather than build a model (a minute, 1.5 GB) to search nothing.
        from clipalbum.server.schemas import SearchResponse

        empty = SearchResponse(results=[], took_ms=0.0, query=args.query or "", k=args.k)
        print(msgspec.json.encode(empty).decode() if args.json else "0 results")
        print("clipalbum: the index is empty; run `clipalbum index FOLDER` first", file=sys.stderr)
        return 0
    with closing(_open_library(args)) as library:
        if args.similar is not None:
            response = library.similar(args.similar, k=args.k, min_score=args.min_score)
        elif query_photo is not None:
            try:
                with open(query_photo, "rb") as photo:
                    response = library.search_image(photo, k=args.k, min_score=args.min_score)
            except OSError as exc:
                raise ClipalbumError(f"cannot read {for_terminal(args.image)}: {exc.strerror or exc}") from exc
        else:
            response = library.search_text(args.query or "", k=args.k, min_score=args.min_score)
        empty = not response.results and library.status(max_errors=0).indexed == 0
    if args.json:
        print(msgspec.json.encode(response).decode())
    else:
        for hit in response.results:  # the id first: `clipalbum search --similar ID` takes it
            print(f"{hit.id:>7}  {hit.score:6.3f}  {for_terminal(str(Path(hit.root) / hit.path))}")
        print(f"{len(response.results)} results in {response.took_ms:.1f} ms", file=sys.stderr)
    if empty:
        print("clipalbum: the index is empty; run `clipalbum index FOLDER` first", file=sys.stderr)
    return 0


def _no_model_yet(args: argparse.Namespace) -> bool:
    """True when no model is chosen and the default one has not been built (read-only commands then answer
    from the database instead of building it)."""
    from clipalbum.server.errors import BundleError
    from clipalbum.server.model_resolver import resolve_bundle

    try:
        resolve_bundle(data_paths(args.data_dir), args.model, build_if_missing=False)
    except BundleError:
        return True
    return False


def _indexed_photos(paths: DataPaths) -> int:
    """Photos with a vector in the data directory's index, whichever model embedded them (no model loaded)."""
    from clipalbum.server.store import open_store

    if not paths.database_url and not paths.database.is_file():
        return 0
    with closing(open_store(paths)) as store:
        return store.embedded_count()


def _status_without_model(args: argparse.Namespace) -> StatusResponse:
    from clipalbum.server.library import index_status
    from clipalbum.server.schemas import ScanProgress
    from clipalbum.server.store import open_store

    paths = _paths(args).ensure()
    with closing(open_store(paths)) as store:
        model_id = store.get_meta("ann_model_id") or "none yet"
        return index_status(store, model_id, 0, ScanProgress(), max_errors=args.max_errors)


def cmd_status(args: argparse.Namespace) -> int:
    if _no_model_yet(args):  # status never builds a model
        status = _status_without_model(args)
    else:
        with closing(_open_library(args)) as library:
            status = library.status(max_errors=args.max_errors)
    if args.json:
        print(msgspec.json.encode(status).decode())
        return 0
    albums = ", ".join(for_terminal(root) for root in status.roots)
    model = f"{status.model_id} ({status.embed_dim}-d)" if status.embed_dim else f"{status.model_id} (not built)"
    print(f"model {model}; albums: {albums or 'none'}")
    print(f"indexed {status.indexed}, pending {status.pending}, failed {status.failed}")
    # `errors` lists the folder and link problems the last scan met first, then failed files.
    walk_problems = max(status.errors_total - status.failed, 0)
    for i, entry in enumerate(status.errors):
        what = "skipped" if i < walk_problems else "failed"
        print(f"  {what}: {for_terminal(entry.path)}: {for_terminal(entry.error)}")
    if status.errors_truncated:
        problems_shown = min(walk_problems, len(status.errors))
        more = [_count(walk_problems - problems_shown, "more folder or link problem"),
                _count(status.failed - (len(status.errors) - problems_shown), "more failed file")]
        print(f"  ... and {' and '.join(m for m in more if m)} "
              f"(clipalbum status --max-errors {status.errors_total} lists them)")
    return 0


def _count(n: int, noun: str) -> str:
    """'1 noun', 'n nouns', or '' for none."""
    return "" if n <= 0 else f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _non_negative(text: str) -> int:
    """argparse type: an int >= 0 (a negative list limit would mean 'all but the last' to Python slices)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    from clipalbum.server.serve_config import ServeConfig, find_config, read_config, to_toml, with_overrides

    paths = data_paths(args.data_dir)
    source = find_config(paths.root, args.config)
    config = with_overrides(read_config(source) if source else ServeConfig(), {
        "database": args.database, "thumbnails": args.thumbnails, "albums": args.album, "host": args.host,
        "port": args.port, "rescan_minutes": args.rescan_minutes, "allowed_hosts": args.allowed_host, "cors_origins": args.cors_origin,
        "require_token": True if args.require_token else None, "model": args.model,
        "follow_links_outside": args.follow_links_outside})
    if args.print_config:
        origin = f"from {for_terminal(str(source))} and the command line" if source else "no config file; defaults and the command line"
        print(f"# clipalbum serve settings ({origin})\n{to_toml(config)}", end="")
        return 0
    from clipalbum.server.app import serve

    serve(data_paths(args.data_dir, config.database, config.thumbnails), model=config.model, albums=config.albums,
          host=config.host, port=config.port, rescan_minutes=config.rescan_minutes,
          allowed_hosts=config.allowed_hosts, cors_origins=config.cors_origins,
          require_token=config.require_token, follow_links_outside=config.follow_links_outside)
    return 0


def cmd_db_compact(args: argparse.Namespace) -> int:
    from clipalbum.server.store import Store

    paths = data_paths(args.data_dir)
    if paths.database_url:
        raise ClipalbumError("the index is in PostgreSQL, which reclaims deleted rows' space itself (autovacuum); "
                             "db compact shrinks a data directory's SQLite file")
    if not paths.database.is_file():
        raise ClipalbumError(f"no index in {paths.root}: nothing to compact")
    with closing(Store(paths.database)) as store:
        before, after = store.compact()
    print(f"{paths.database}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    return 0


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from clipalbum.server.dbmigrate import migrate

    paths = data_paths(args.data_dir, args.to)  # --to, else $CLIPALBUM_DATABASE
    if not paths.database_url:
        raise ClipalbumError("say which database to migrate into: --to postgresql://user@host/dbname")
    summary = migrate(paths, paths.database_url, progress=not args.quiet)
    if args.json:
        print(msgspec.json.encode(summary).decode())
        return 0
    print(f"migrated {summary.photos} photos ({summary.copied} copied by this run) into {summary.database} in "
          f"{summary.seconds:.0f} s; models: {', '.join(summary.models) or 'none'}")
    print(f"serve from it: clipalbum serve --database '{summary.database}'  (the data directory keeps the "
          "thumbnails; the SQLite file is left as it was)")
    return 0


def cmd_service(args: argparse.Namespace) -> int:
    from clipalbum.server import service

    if args.action == "uninstall":
        removed = service.uninstall()
        if removed is None:
            print(f"clipalbum: no {service.UNIT_NAME} in {for_terminal(str(service.unit_dir()))}; nothing to remove")
            return 0
        print(f"removed {for_terminal(str(removed))}\nthen: systemctl --user disable --now {service.UNIT_NAME}; "
              "systemctl --user daemon-reload")
        return 0
    config = Path(args.config).expanduser() if args.config else None
    if config is not None and not config.is_file():
        raise ClipalbumError(f"no config file at {for_terminal(args.config)}")
    unit = service.install(data_paths(args.data_dir).root, config)
    print(f"wrote {for_terminal(str(unit))}\n"
          f"start it now and at every boot:\n"
          f"  systemctl --user daemon-reload && systemctl --user enable --now {service.UNIT_NAME}\n"
          f"  loginctl enable-linger $USER     # start at boot, before you log in\n"
          f"its log: journalctl --user -u clipalbum -f")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from clipalbum.server.security import TokenStore

    store = TokenStore(data_paths(args.data_dir).token)
    if args.rotate:
        token = store.rotate()
        print("clipalbum: new access token; the old one and every login cookie stop working now, "
              "also in a running server", file=sys.stderr)
    else:
        if store.ensure():
            print("clipalbum: created a new access token", file=sys.stderr)
        token = store.current()
    print(token)  # alone on stdout, for scripts: curl -H "Authorization: Bearer $(clipalbum token)"
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from clipalbum.server.bundle import read_manifest
    from clipalbum.server.evaluate import evaluate_bundle
    from clipalbum.server.model_resolver import named_bundle, resolve_bundle

    bundle = resolve_bundle(data_paths(args.data_dir), args.model)
    against = named_bundle(args.against) if args.against is not None else None
    if against is not None:
        read_manifest(against)  # a mistyped --against fails now, not after the first evaluation
    report = evaluate_bundle(bundle, Path(args.images), Path(args.captions), progress=not args.quiet,
                             limit=args.limit)
    if against is None:
        print(msgspec.json.encode(report).decode() if args.json else report.describe())
        return 0
    from clipalbum.server.evaluate import side_by_side

    baseline = evaluate_bundle(against, Path(args.images), Path(args.captions),
                               progress=not args.quiet, limit=args.limit)
    if args.json:
        print(msgspec.json.encode({"model": report, "against": baseline}).decode())
    else:
        print(side_by_side(report, baseline))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from clipalbum.server.demo import run_demo

    run_demo(_paths(args), host=args.host, port=args.port, no_serve=args.no_serve)
    return 0


# Subcommands that live outside server/ (torch): their modules parse their own arguments.
DELEGATED = {
    "train": ("clipalbum.training.cli", "train", "train a dual encoder from a TOML config"),
    "export": ("clipalbum.export.cli", "export", "turn a training checkpoint into a model bundle"),
}


def run_delegated(command: str, rest: list[str]) -> int:
    module, extra, _ = DELEGATED[command]
    return delegate(module, extra, command, rest)


def delegate(module: str, extra: str, command: str, argv: list[str]) -> int:
    """Runs `module.main(argv)`, a command that needs torch: a missing extra is a one-line error."""
    try:
        target = importlib.import_module(module)
    except ImportError as exc:
        raise ClipalbumError(f"'{command}' needs the {extra} extras ({exc}); pip install 'clipalbum[{extra}]'") from exc
    return int(target.main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipalbum", description="Find photos in your album by describing them.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="build, list, inspect or remove model bundles")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    build = model_sub.add_parser("build", help="build the default bundle offline from packaged weights")
    build.add_argument("--out", help="bundle directory (default: the model cache, $CLIPALBUM_MODEL_CACHE or "
                       "$XDG_CACHE_HOME/clipalbum/models)")
    build.add_argument("--force", action="store_true", help="rebuild even if a bundle is there")
    build.set_defaults(func=cmd_model_build)
    listing = model_sub.add_parser("list", help="the bundles in the model cache and the data directories using them")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_model_list)
    info = model_sub.add_parser("info", help="show a bundle's manifest, size and users, and verify its checksums")
    info.add_argument("bundle", nargs="?", help="a bundle folder or a cached model id (default: the one the data "
                      "directory searches with)")
    _add_common(info)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_model_info)
    # Parsed by export/import_cli.py (torch): main() hands it the arguments; listed here for --help.
    model_sub.add_parser("import", help="import a pretrained CLIP (transformers or OpenCLIP) as a bundle; see "
                         "`clipalbum model import --help`", add_help=False)
    remove = model_sub.add_parser("remove", help="delete a bundle from the model cache")
    remove.add_argument("model_id", help="the model id, as `clipalbum model list` shows it")
    remove.add_argument("--force", action="store_true", help="remove it even while a data directory uses it")
    remove.set_defaults(func=cmd_model_remove)

    index = sub.add_parser("index", help="index (or update) album folders")
    _add_common(index)
    index.add_argument("paths", nargs="*", help="album folders (default: those indexed before)")
    index.add_argument("--reembed", action="store_true", help="embed every photo again")
    index.add_argument("--json", action="store_true", help="print the summary as JSON")
    index.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_follow_links(index)
    index.set_defaults(func=cmd_index)

    search = sub.add_parser("search", help="search the index by text, by an indexed photo, or by a photo file")
    _add_common(search)
    search.add_argument("query", nargs="*", help="what the photo shows, in plain English; descriptions joined "
                        "by + and - are added and subtracted: clipalbum search beach + sunset - people")
    search.add_argument("--similar", type=int, metavar="ID", help="photos like the indexed photo ID")
    search.add_argument("--image", metavar="FILE", help="photos like this photo file")
    search.add_argument("--k", type=int, default=20, help="how many results (default 20)")
    search.add_argument("--min-score", type=float, metavar="S",
                        help="leave out results scoring below S (cosine similarity, -1 to 1; default: none)")
    search.add_argument("--json", action="store_true", help="print the results as JSON")
    search.set_defaults(func=cmd_search)

    status = sub.add_parser("status", help="counts, model and failed files")
    _add_common(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--max-errors", type=_non_negative, default=100, metavar="N",
                        help="list at most N folder or link problems and failed files (default 100)")
    status.set_defaults(func=cmd_status)

    serve = sub.add_parser("serve", help="run the web server (indexes in the background)")
    _add_common(serve)
    serve.add_argument("--album", action="append", default=[], help="album folder (repeatable)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, help="default 8000")
    serve.add_argument("--rescan-minutes", type=float, help="periodic rescan (0: never; default 30)")
    serve.add_argument("--thumbnails", metavar="DIR", help="cache thumbnails in this folder (default: the data "
                       "directory's); servers sharing a database may share it")
    serve.add_argument("--config", metavar="FILE", help="settings file (default: $CLIPALBUM_CONFIG, else "
                       "clipalbum.toml in the data directory, else in $XDG_CONFIG_HOME/clipalbum); options given "
                       "here override it")
    serve.add_argument("--print-config", action="store_true",
                       help="print the settings serve would run with (file and options merged) as TOML, and exit")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="also answer requests for this host name, e.g. behind a reverse proxy (repeatable; "
                            "turns on the access token)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="let pages from this origin (e.g. https://app.example) call the API (repeatable)")
    serve.add_argument("--require-token", action="store_true",
                       help="require the access token even on loopback (a reverse proxy in front)")
    _add_follow_links(serve)
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="move the index into PostgreSQL (db migrate), shrink its SQLite file (db compact)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    mig = db_sub.add_parser("migrate", help="copy the data directory's index into a PostgreSQL database with "
                            "pgvector (resumable: run it again after a stop)")
    mig.add_argument("--data-dir", help="the data directory to copy (default: $CLIPALBUM_DATA_DIR or "
                     "$XDG_DATA_HOME/clipalbum)")
    mig.add_argument("--to", metavar="URL", help="postgresql://user@host/dbname (default: $CLIPALBUM_DATABASE)")
    mig.add_argument("--json", action="store_true", help="print the summary as JSON")
    mig.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    mig.set_defaults(func=cmd_db_migrate)
    compact = db_sub.add_parser("compact", help="shrink the data directory's SQLite file to what it holds (after a "
                                "model switch or many removals; searches go on meanwhile)")
    compact.add_argument("--data-dir", help="the data directory (default: $CLIPALBUM_DATA_DIR or "
                         "$XDG_DATA_HOME/clipalbum)")
    compact.set_defaults(func=cmd_db_compact)

    svc = sub.add_parser("service", help="install (or uninstall) a systemd user unit that runs serve at boot")
    svc.add_argument("action", choices=["install", "uninstall"], help="write or remove the systemd user unit")
    svc.add_argument("--data-dir", help="the data directory serve uses (default: $CLIPALBUM_DATA_DIR or "
                     "$XDG_DATA_HOME/clipalbum)")
    svc.add_argument("--config", metavar="FILE", help="settings file for serve (default: the clipalbum.toml serve "
                     "finds at each start; see serve --config)")
    svc.set_defaults(func=cmd_service)

    token = sub.add_parser("token", help="show (or --rotate) the access token for serving beyond loopback")
    token.add_argument("--data-dir", help="data directory (default: $CLIPALBUM_DATA_DIR or $XDG_DATA_HOME/clipalbum)")
    token.add_argument("--rotate", action="store_true",
                       help="replace the token: old tokens and logins stop working, also in a running server")
    token.set_defaults(func=cmd_token)

    ev = sub.add_parser("eval", help="text-to-image Recall@1/5/10 on a folder of photos and a captions CSV")
    _add_common(ev)
    ev.add_argument("--images", required=True, help="folder of photos")
    ev.add_argument("--captions", required=True, help="CSV with columns image,caption")
    ev.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    ev.add_argument("--against", metavar="BUNDLE", help="also evaluate this bundle (folder or cached model id) "
                    "on the same photos and captions, and show both side by side: a fine-tuned model against "
                    "the one it started from")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_eval)

    demo = sub.add_parser("demo", help="build the model, index a sample album and serve it")
    _add_common(demo)
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    demo.add_argument("--no-serve", action="store_true", help="stop after indexing")
    demo.set_defaults(func=cmd_demo)

    for name, (_, _, text) in DELEGATED.items():  # listed for --help; main() hands them their arguments
        sub.add_parser(name, help=text, add_help=False)
    sub.add_parser("enhance", help="fix noisy, dark or badly lit photos (also: enhance eval|train|export)",
                   add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    delegated = bool(argv) and argv[0] in (*DELEGATED, "enhance")
    flags = next((i for i, arg in enumerate(argv) if arg not in ("-v", "--verbose")), len(argv))
    importing = argv[flags:flags + 2] == ["model", "import"]  # export/import_cli.py parses the rest
    args = build_parser().parse_args(argv[:1] if delegated else argv[:flags + 2] if importing else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if importing:
            return delegate("clipalbum.export.import_cli", "export", "model import", argv[flags + 2:])
        if delegated and argv[0] == "enhance":
            from clipalbum.server.enhance.cli import main as enhance_main

            return enhance_main(argv[1:])
        return run_delegated(argv[0], argv[1:]) if delegated else args.func(args)
    except ClipalbumError as exc:
        print(f"clipalbum: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `clipalbum search ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush can't fail too
        return 0
    except (OSError, sqlite3.Error) as exc:  # a full or read-only data directory: say so, no traceback
        if (problem := storage_problem(exc, data_paths(getattr(args, "data_dir", None)).root)) is None:
            raise
        print(f"clipalbum: {problem}", file=sys.stderr)
        return 2
    except Exception as exc:  # psycopg's (the postgres extra): a database that went away, a full disk there
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        print(f"clipalbum: database error: {str(exc).strip() or type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipalbum: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
