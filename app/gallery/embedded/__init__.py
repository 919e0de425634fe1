"""The embedded gallery: SQLite is the truth, FAISS an in-memory index; one process."""

from app.gallery.embedded.store import EmbeddedGallery

__all__ = ["EmbeddedGallery"]
