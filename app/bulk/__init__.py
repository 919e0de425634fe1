"""Bulk gallery paths: export and import embeddings (npz), import folders of photos."""
