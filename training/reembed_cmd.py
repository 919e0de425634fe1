"""``python -m training reembed``: a gallery's stored aligned crops -> a new gallery embedded
by another recognizer (through onnxruntime, as the service embeds: no PyTorch)."""

from __future__ import annotations

import argparse
from contextlib import closing
from pathlib import Path

import numpy as np

from app.config import available_cores
from app.core.gallery import Gallery
from app.core.pipeline import Embedder
from app.core.types import FaceRecord, NewFace, reembedded
from app.gallery import open_gallery
from app.gallery.embedded.generations import EmbeddedGenerations
from app.inference.image import decode_image
from app.inference.loader import build_embedder, load_model
from app.inference.session import RuntimeOptions
from training.config import ConfigError
from training.face_sources import resolve_models_dir

# Crops embedded per call: one onnxruntime batch, a bounded amount of decoded pixels.
REEMBED_BATCH = 64


def gallery_model(data_dir: Path) -> tuple[str, int]:
    """The (model id, dim) a gallery was created with, read without opening it for writing."""
    import sqlite3

    from app.gallery.embedded.schema import DB_FILENAME

    path = data_dir / DB_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no gallery at {data_dir} ({DB_FILENAME} missing)")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    return str(meta["model_id"]), int(meta["dim"])


def run_reembed(args: argparse.Namespace) -> int:
    """Copy every face that kept its aligned crop into a new gallery, embedded by the new
    recognizer; faces without a stored crop are listed and must be enrolled again."""
    models_dir = resolve_models_dir(args.models_dir)
    model = load_model(
        args.recognizer,
        "recognizer",
        models_dir=models_dir,
        catalog_dir=None,
        options=RuntimeOptions(intra_op_threads=available_cores()),
    )
    embedder = build_embedder(model)
    manifest = model.manifest
    assert manifest.embedding_dim is not None
    generations = EmbeddedGenerations(args.data_dir)
    source_dir = generations.gallery_dir(generations.active_number())  # after a live swap
    old_id, old_dim = gallery_model(source_dir)
    if args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"{args.out} is not empty: re-embed into a new folder")
    with (
        closing(open_gallery(data_dir=source_dir, model_id=old_id, dim=old_dim)) as old,
        closing(
            open_gallery(data_dir=args.out, model_id=manifest.model_id, dim=manifest.embedding_dim)
        ) as new,
    ):
        total = old.total_faces()
        copied = copy_faces(old, new, embedder, args.collection)
    keys_copied = copy_api_keys(args.data_dir, args.out)
    print(
        f"re-embedded {copied} of {total} faces from {old_id} into {args.out} "
        f"({manifest.model_id}); {total - copied} had no stored crop and need re-enrolling"
        + ("; API keys copied" if keys_copied else "")
    )
    return 0


def copy_faces(old: Gallery, new: Gallery, embedder: Embedder, collection: str | None) -> int:
    """Every face of ``old`` (of ``collection``, or all) that kept its aligned crop, embedded
    again into ``new``; returns how many."""
    copied = 0
    batch: list[tuple[FaceRecord, bytes]] = []
    for record, png in old.aligned_crops(collection):
        batch.append((record, png))
        if len(batch) == REEMBED_BATCH:
            copied += add_embedded(batch, new, embedder)
            batch = []
    if batch:
        copied += add_embedded(batch, new, embedder)
    return copied


def add_embedded(batch: list[tuple[FaceRecord, bytes]], new: Gallery, embedder: Embedder) -> int:
    """Embed the stored crops of ``batch`` and add them to ``new``, grouped by subject."""
    crops = np.stack(
        [decode_image(png, max_bytes=1 << 24, max_pixels=1 << 20).pixels for _, png in batch]
    )
    embeddings = embedder.embed(crops)
    groups: dict[tuple[str, str], list[NewFace]] = {}
    for (record, png), embedding in zip(batch, embeddings, strict=True):
        groups.setdefault((record.collection, record.subject), []).append(
            reembedded(record, embedding, png)
        )
    for (collection, subject), faces in groups.items():
        new.add_faces(collection, subject, faces)
    return len(batch)


def copy_api_keys(old_dir: Path, new_dir: Path) -> bool:
    """The service's API keys go with the gallery (SQLite's online backup: a consistent copy)."""
    import sqlite3

    from app.auth.store import KEYS_FILENAME

    source = old_dir / KEYS_FILENAME
    if not source.is_file():
        return False
    with (
        sqlite3.connect(f"file:{source}?mode=ro", uri=True) as old,
        sqlite3.connect(new_dir / KEYS_FILENAME) as new,
    ):
        old.backup(new)
    return True
