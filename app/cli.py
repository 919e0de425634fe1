"""The ``facerec`` command: serve the API; models; admin keys; bulk gallery paths.

A composition root: it reads the environment (through ``Settings``, plus
``FACEREC_MODELS_URL_BASE`` for mirrors) and hands plain values to the library.
Exit codes: 0 success, 1 a domain error (one line on stderr), 2 a usage error or a
missing extra (``pip install 'facerec[cpu]'``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path

from pydantic import ValidationError

import app
from app.auth.keystore import KeyStore
from app.auth.store import KEYS_FILENAME, SqliteKeyStore
from app.cli_swap import add_swap_actions
from app.config import Settings
from app.core.gallery import Gallery
from app.errors import FaceRecError, GalleryUnavailable, ModelChecksumMismatch, ModelNotFound
from app.inference.catalog import (
    ModelPack,
    list_manifests,
    list_packs,
    pack_of,
    resolve_manifest,
    resolve_pack,
)
from app.inference.fetch import archive_url, fetch_pack
from app.inference.manifest import ModelManifest, file_sha256, resolve_model_file
from app.observability.logging import configure_logging

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
# 128 + SIGINT, what a shell reports for Ctrl-C.
EXIT_INTERRUPTED = 130
URL_BASE_ENV = "FACEREC_MODELS_URL_BASE"
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except MissingExtra as exc:
        return _fail(str(exc), status=EXIT_USAGE)
    except FaceRecError as exc:
        return _fail(f"[{exc.code}] {exc.message}")
    except ValidationError as exc:
        return _fail(f"invalid FACEREC_* configuration: {exc}")
    except OSError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", status=EXIT_INTERRUPTED)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facerec",
        description="Face recognition service: serve the API, manage models.",
        epilog=f"models directory: {_MODELS_DIR_HELP}",
    )
    parser.add_argument("--version", action="version", version=f"facerec {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the HTTP API (one uvicorn worker)",
        description="Run the HTTP API. Configured by FACEREC_* environment variables; "
        f"models are read from {_MODELS_DIR_HELP}.",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", choices=_LOG_LEVELS, help="default: FACEREC_LOG_LEVEL")
    serve.set_defaults(handler=_serve)

    keys = commands.add_parser(
        "keys", help="API keys, from the machine itself (file access to the data folder)"
    )
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    mint = key_actions.add_parser(
        "create-admin",
        help="mint a new admin key (works while the server runs; prints the secret once)",
    )
    mint.add_argument("--name", default="admin (cli)", help="what the key is for")
    mint.add_argument(
        "--data-dir", type=Path, help="data folder (default: FACEREC_DATA_DIR or data)"
    )
    mint.set_defaults(handler=_create_admin_key)
    listing_keys = key_actions.add_parser("list", help="every key: id, name, scope, revoked")
    listing_keys.add_argument(
        "--data-dir", type=Path, help="data folder (default: FACEREC_DATA_DIR or data)"
    )
    listing_keys.set_defaults(handler=_list_keys)

    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--dir", type=Path, help=f"models directory (default: {_MODELS_DIR_HELP})")
    where.add_argument(
        "--catalog", type=Path, help="catalog directory (default: FACEREC_CATALOG_DIR or models/)"
    )
    models = commands.add_parser(
        "models", help="list, fetch and verify model files; switch the serving recognizer"
    )
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=[where], help="catalog models and their files")
    listing.set_defaults(handler=_list)

    fetch = actions.add_parser("fetch", parents=[where], help="download and install a pack")
    fetch.add_argument("name", metavar="NAME", help="pack name, model name, or pack JSON path")
    fetch.add_argument("--url", help=f"archive URL (default: pack URL, or {URL_BASE_ENV} + name)")
    fetch.add_argument(
        "--allow-unpinned", action="store_true", help="install files that have no pinned sha256"
    )
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.set_defaults(handler=_fetch)

    verify = actions.add_parser("verify", parents=[where], help="check sha256 of present files")
    verify.set_defaults(handler=_verify)
    add_swap_actions(actions)
    _add_gallery_commands(commands)
    return parser


def _add_gallery_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gallery = commands.add_parser(
        "gallery",
        help="bulk export and import (the server must be stopped: embedded galleries "
        "are opened by one process at a time)",
    )
    actions = gallery.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--collection", required=True, help="the collection to read or fill")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_argument(
        "--verbose", action="store_true", help="log at FACEREC_LOG_LEVEL (default: warnings)"
    )

    export = actions.add_parser(
        "export", parents=[common], help="write a collection's embeddings to an .npz file"
    )
    export.add_argument("out", type=Path, metavar="OUT.npz")
    export.add_argument("--batch-size", type=_positive, default=BULK_BATCH_SIZE)
    export.set_defaults(handler=_gallery_export)

    embeddings = actions.add_parser(
        "import-embeddings",
        parents=[common],
        help="add the faces of an .npz file (from export); safe to re-run",
    )
    embeddings.add_argument("source", type=Path, metavar="FILE.npz")
    embeddings.add_argument("--batch-size", type=_positive, default=BULK_BATCH_SIZE)
    embeddings.set_defaults(handler=_gallery_import_embeddings)

    photos = actions.add_parser(
        "import-photos",
        parents=[common],
        help="enroll DIR/<subject>/<photo> with the gates of POST /enroll; safe to re-run",
    )
    photos.add_argument("directory", type=Path, metavar="DIR")
    photos.add_argument(
        "--face-policy",
        choices=("single", "largest"),
        default="single",
        help="single: reject photos with several faces (default); largest: use the largest",
    )
    photos.set_defaults(handler=_gallery_import_photos)


def _serve(args: argparse.Namespace) -> int:
    with extras_required():
        from app.main import build_runtime, create_app
        from app.serving import listen, serve

    settings = Settings()
    log_level = args.log_level or settings.log_level.lower()
    configure_logging("DEBUG" if log_level == "trace" else log_level, settings.log_format)
    # The port first: a port in use must end here, before the first admin key is
    # created and shown (it would be lost with the process).
    sock = listen(args.host, args.port)
    try:
        # Load models and open the gallery before the server starts, so that a bad
        # configuration ends here with one line on stderr and exit status 1.
        with extras_required():
            runtime = build_runtime(settings)
        serve(
            create_app(settings, runtime=runtime),
            sock,
            log_level=log_level,
            shutdown_grace_s=settings.shutdown_grace_s,
            header_timeout_s=settings.header_timeout_s,
        )
    finally:
        sock.close()
    return EXIT_OK


@contextmanager
def _key_store(args: argparse.Namespace) -> Iterator[KeyStore]:
    """The service's key store: PostgreSQL when FACEREC_DATABASE_URL is set, else the
    SQLite file in the data folder (local file access is what authorises these commands)."""
    settings = Settings()
    if settings.database_url is not None:
        from app.main import open_shared_database, shared_key_store

        database = open_shared_database(settings)
        assert database is not None  # database_url is set
        try:
            store = shared_key_store(database)
            try:
                yield store
            finally:
                store.close()
        finally:
            database.close()
        return
    data_dir: Path = args.data_dir if args.data_dir is not None else settings.data_dir
    if not data_dir.is_dir():
        raise OSError(f"{data_dir} is not a folder (FACEREC_DATA_DIR, or --data-dir)")
    store = SqliteKeyStore(data_dir / KEYS_FILENAME)
    try:
        yield store
    finally:
        store.close()


def _create_admin_key(args: argparse.Namespace) -> int:
    with _key_store(args) as store:
        issued = store.create(name=args.name, collections=(), admin=True)
    print(f"key id:    {issued.key.key_id}", file=sys.stderr)
    print(
        "X-API-Key (shown once, store it now; a running server accepts it at once):",
        file=sys.stderr,
    )
    print(issued.token)
    return EXIT_OK


def _list_keys(args: argparse.Namespace) -> int:
    with _key_store(args) as store:
        keys = store.list_keys()
    rows = [("KEY ID", "NAME", "SCOPE", "REVOKED")]
    for key in keys:
        scope = "admin" if key.admin else ",".join(key.collections)
        revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "-"
        rows.append((key.key_id, key.name, scope, revoked))
    _print_table(rows)
    return EXIT_OK


def _gallery_export(args: argparse.Namespace) -> int:
    from app.bulk.embeddings import export_collection

    settings, collection = _bulk_settings(args)
    with _open_bulk_gallery(settings) as gallery:
        done = export_collection(
            gallery,
            collection,
            args.out,
            batch_size=args.batch_size,
            progress=_progress(args),
        )
    print(
        f"exported {done.faces} faces of collection {collection!r} to {args.out} "
        f"in {done.seconds:.1f} s"
    )
    return EXIT_OK


def _gallery_import_embeddings(args: argparse.Namespace) -> int:
    from app.bulk.embeddings import import_embeddings

    settings, collection = _bulk_settings(args)
    with _open_bulk_gallery(settings) as gallery:
        done = import_embeddings(
            gallery,
            collection,
            args.source,
            batch_size=args.batch_size,
            progress=_progress(args),
        )
    rate = done.faces / done.seconds if done.seconds > 0 else 0.0
    print(
        f"imported {args.source} into collection {collection!r}: {done.added} faces added, "
        f"{done.existing} already there, in {done.seconds:.1f} s ({rate:.0f} rows/s)"
    )
    return EXIT_OK


def _gallery_import_photos(args: argparse.Namespace) -> int:
    from app.bulk.photos import import_photos
    from app.main import build_service, load_models, start_batcher
    from app.observability.metrics import Metrics

    settings, collection = _bulk_settings(args)
    detector, recognizer = load_models(settings)
    metrics = Metrics()
    with (
        _open_bulk_gallery(settings) as gallery,
        closing(start_batcher(settings, recognizer, metrics)) as batcher,
    ):
        service = build_service(settings, detector, recognizer, gallery, metrics, batcher)
        done = import_photos(
            service,
            collection,
            args.directory,
            policy=args.face_policy,
            max_image_bytes=settings.max_image_bytes,
            photos_per_call=settings.max_images_per_enroll,
            progress=_progress(args),
        )
    print(
        f"import-photos {args.directory} -> collection {collection!r}: {done.subjects} subjects, "
        f"{done.added} faces added, {done.existing} already enrolled, "
        f"{sum(done.rejected.values())} photos rejected, in {done.seconds:.1f} s"
    )
    for code, count in sorted(done.rejected.items(), key=lambda item: (-item[1], item[0])):
        print(f"  rejected {count:6d}  {code}")
    for path, code, message in done.examples:
        print(f"  {code}: {path}: {message}")
    return EXIT_OK


BULK_BATCH_SIZE = 10_000


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _bulk_settings(args: argparse.Namespace) -> tuple[Settings, str]:
    from app.api.deps import validate_collection
    from app.main import generation_store, serving_settings

    settings = Settings()
    configure_logging(settings.log_level if args.verbose else "WARNING", "text")
    if settings.database_url is None:
        # The active generation's recognizer. With PostgreSQL the configured one must be
        # it: opening the active generation for another model is refused (model mismatch).
        settings, _ = serving_settings(settings, generation_store(settings, None))
    return settings, validate_collection(args.collection)


@contextmanager
def _open_bulk_gallery(settings: Settings) -> Iterator[Gallery]:
    """The configured gallery for the configured recognizer's embeddings; closed after."""
    from app.main import open_configured_gallery, open_shared_database

    manifest, _ = resolve_manifest(settings.recognizer, settings.catalog_dir)
    assert manifest.embedding_dim is not None  # the manifest validator requires it
    with ExitStack() as resources:
        database = open_shared_database(settings)
        if database is not None:
            resources.callback(database.close)
        try:
            gallery = open_configured_gallery(
                settings, model_id=manifest.model_id, dim=manifest.embedding_dim, database=database
            )
        except GalleryUnavailable as exc:
            if not exc.details.get("locked"):
                raise
            raise GalleryUnavailable(
                f"the gallery in {settings.data_dir} is in use by another process (pid "
                f"{exc.details.get('holder_pid')}), such as a running `facerec serve`. An "
                "embedded gallery is opened by one process at a time: stop the server and run "
                "this again, or enroll through the server's HTTP API (POST /enroll) while it runs",
                **exc.details,
            ) from exc
        resources.callback(gallery.close)
        yield gallery


def _list(args: argparse.Namespace) -> int:
    models_dir, catalog_dir = _locations(args)
    rows = [("NAME", "KIND", "STATUS", "FILE")]
    for name in list_manifests(catalog_dir):
        manifest, manifest_path = resolve_manifest(name, catalog_dir)
        status = _file_status(manifest, manifest_path, models_dir)
        pack = pack_of(manifest, catalog_dir)
        hint = f"  (facerec models fetch {pack})" if status == "missing" and pack else ""
        rows.append((name, manifest.kind, status, manifest.file + hint))
    _print_table(rows)
    print(f"\nmodels directory: {models_dir.resolve()}")
    print(f"packs: {', '.join(list_packs(catalog_dir)) or '(none)'}")
    return EXIT_OK


def _fetch(args: argparse.Namespace) -> int:
    models_dir, catalog_dir = _locations(args)
    pack = _pack_for(args.name, catalog_dir)
    url_base = os.environ.get(URL_BASE_ENV) or None
    url = archive_url(pack, url_override=args.url, url_base=url_base)
    progress = not args.no_progress and sys.stderr.isatty()
    result = fetch_pack(
        pack, models_dir, url_override=url, progress=progress, allow_unpinned=args.allow_unpinned
    )
    state = "installed from " + url if result.downloaded else "already installed and verified"
    print(f"{pack.name}: {state}")
    for installed in result.files:
        print(f"  {installed.path}  sha256 {installed.sha256}")
    print(f"licence: {pack.licence}")
    if selection := _serve_hint(pack, models_dir, catalog_dir):
        print(f"serve them: {selection} facerec serve")
    return EXIT_OK


def _serve_hint(pack: ModelPack, models_dir: Path, catalog_dir: Path | None) -> str:
    """The FACEREC_* settings that serve a pack's detector and recognizer, when it has both."""
    chosen: dict[str, str] = {}
    for member in pack.members:
        if member.manifest is None:
            continue
        try:
            manifest, _ = resolve_manifest(member.manifest, catalog_dir)
        except FaceRecError:  # a pack file from elsewhere, naming manifests not in the catalog
            return ""
        chosen.setdefault(manifest.kind, member.manifest)
    if not {"detector", "recognizer"} <= set(chosen):
        return ""
    return (
        f"FACEREC_MODELS_DIR={models_dir} FACEREC_DETECTOR={chosen['detector']} "
        f"FACEREC_RECOGNIZER={chosen['recognizer']}"
    )


def _verify(args: argparse.Namespace) -> int:
    models_dir, catalog_dir = _locations(args)
    names = list(list_manifests(catalog_dir))
    width = max((len(name) for name in names), default=0)
    counts = {"ok": 0, "missing": 0, "failed": 0}
    for name in names:
        manifest, manifest_path = resolve_manifest(name, catalog_dir)
        label = name.ljust(width)
        try:
            path = resolve_model_file(manifest, [manifest_path.parent, models_dir])
        except ModelNotFound:
            counts["missing"] += 1
            print(f"missing   {label}  {manifest.file}")
            continue
        except ModelChecksumMismatch as exc:
            counts["failed"] += 1
            print(f"MISMATCH  {label}  {exc.message}")
            continue
        counts["ok"] += 1
        print(f"ok        {label}  {path}  sha256 {file_sha256(path)}")
    print(f"{counts['ok']} verified, {counts['missing']} missing, {counts['failed']} failed")
    if counts["failed"]:
        return _fail(f"{counts['failed']} model file(s) do not match their manifest sha256")
    if not counts["ok"]:
        return _fail(
            f"no model file to verify in {models_dir}: download a pack with "
            "`facerec models fetch buffalo_s`, or point --dir / FACEREC_MODELS_DIR at your models"
        )
    return EXIT_OK


def _locations(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """Models and catalog directories: command-line options first, then FACEREC_*."""
    if args.dir is not None and args.catalog is not None:
        return args.dir, args.catalog
    settings = Settings()
    models_dir = args.dir if args.dir is not None else settings.models_dir
    catalog_dir = args.catalog if args.catalog is not None else settings.catalog_dir
    return models_dir, catalog_dir


def _pack_for(ref: str, catalog_dir: Path | None) -> ModelPack:
    """The pack ``ref`` names directly, or the pack that installs the model ``ref`` names."""
    manifests = list_manifests(catalog_dir)
    if ref in manifests and ref not in list_packs(catalog_dir):
        manifest, _ = resolve_manifest(ref, catalog_dir)
        pack_name = pack_of(manifest, catalog_dir)
        if pack_name is None:
            raise ModelNotFound(
                f"model {ref!r} comes in no downloadable pack; put its file {manifest.file!r} "
                "in the models directory (FACEREC_MODELS_DIR) yourself",
                name=ref,
            )
        ref = pack_name
    pack, _ = resolve_pack(ref, catalog_dir)
    return pack


def _file_status(manifest: ModelManifest, manifest_path: Path, models_dir: Path) -> str:
    try:
        resolve_model_file(manifest, [manifest_path.parent, models_dir])
    except ModelNotFound:
        return "missing"
    except ModelChecksumMismatch:
        return "MISMATCH"
    return "ok"


def _print_table(rows: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]))


# --- versions and extras ------------------------------------------------------------------

# The one default models folder, for `serve`, `models ...` and scripts/serve.sh alike.
_MODELS_DIR_HELP = f"FACEREC_MODELS_DIR, else ./{Settings.model_fields['models_dir'].default}"
# Optional modules: the pip extra that installs each, and an alternative worth naming.
EXTRA_OF_MODULE = {
    "onnxruntime": ("cpu", " (NVIDIA GPUs: 'facerec[gpu]' instead)"),
    "openvino": ("openvino", ""),
}


class MissingExtra(Exception):
    """An optional dependency group (a pip "extra") is not installed."""


def package_version() -> str:
    """The installed distribution's version; the source tree's when it is not installed."""
    try:
        return importlib.metadata.version("facerec")
    except importlib.metadata.PackageNotFoundError:
        return app.__version__


@contextmanager
def extras_required() -> Iterator[None]:
    """Turn the import of a missing optional engine into one line naming its extra."""
    try:
        yield
    except ModuleNotFoundError as missing:
        root = (missing.name or "").partition(".")[0]
        if root not in EXTRA_OF_MODULE:
            raise
        extra, alternative = EXTRA_OF_MODULE[root]
        raise MissingExtra(
            f"{root} is not installed: install the {extra} extra: "
            f"pip install 'facerec[{extra}]'{alternative}"
        ) from None


def _fail(message: str, *, status: int = EXIT_ERROR) -> int:
    """One line on stderr: multi-line messages (validation errors) are joined."""
    one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"facerec: error: {one_line}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
