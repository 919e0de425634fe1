"""Subjects kept from before the look-alike rule, told to the operator at every open.

A gallery created before subjects' name keys were stored may hold two subjects of one
collection whose names look alike ("Ada" and "ADA"). The migration keeps both (the
older holds the key, the other is marked ``look_alike``); both backends log how many
each collection has at every open until an operator merges them. The log names
collections, never subjects (people's names stay out of logs); docs/gallery.md
("Look-alike names") has the query that lists them.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def log_look_alikes(per_collection: dict[str, int]) -> None:
    """Warn about ``{collection: look-alike subjects}``; nothing when there are none."""
    if not per_collection:
        return
    logger.warning(
        "the gallery holds %d subject(s) whose names look like another subject of their "
        "collection (%s), kept from before names were compared. Each stays reachable by "
        "its exact name; merge them (docs/gallery.md, 'Look-alike names')",
        sum(per_collection.values()),
        ", ".join(f"{name!r}: {count}" for name, count in sorted(per_collection.items())),
    )
