"""The PostgreSQL + pgvector gallery: one database shared by any number of replicas."""

from app.gallery.postgres.store import PostgresGallery

__all__ = ["PostgresGallery"]
