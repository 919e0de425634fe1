"""The durable face gallery (SQLite truth, in-memory FAISS cache)."""

from app.gallery.records import NewFace
from app.gallery.store import Gallery

__all__ = ["Gallery", "NewFace"]
