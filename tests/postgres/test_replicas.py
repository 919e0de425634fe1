"""Several galleries on one database, each with its own pool and listener: replicas.

Searches read the database, so what one replica committed is what the next search
on any replica sees (no waiting in those tests). The per-replica counters that
``stats``/``collection_version`` answer from follow by NOTIFY: those tests wait
(bounded) for the other replica to hear, and prove that it does, including of
changes made behind the service's back (psql) and while its listener was away.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from app.core.types import FloatArray, NewFace
from app.errors import SubjectNotFound
from app.gallery.postgres import PostgresGallery
from tests.postgres.conftest import OpenReplica, eventually

UnitVectors = Callable[[int], FloatArray]
NearVector = Callable[[FloatArray], FloatArray]
MakeFace = Callable[..., NewFace]


def top_subject(gallery: PostgresGallery, collection: str, query: FloatArray) -> str | None:
    (hits,) = gallery.search(collection, query[None, :], top_k=1)
    return hits[0].subject if hits else None


def terminate_listeners(url: str) -> int:
    """Cut every replica's notification connection (as a network blip or failover would)."""
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN%%' "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_an_enrollment_on_one_replica_is_found_by_the_next_search_on_another(
    open_replica: OpenReplica, unit_vectors: UnitVectors, near: NearVector, make_face: MakeFace
) -> None:
    replica_a, replica_b = open_replica(), open_replica()
    alice = unit_vectors(1)[0]
    assert top_subject(replica_b, "c", alice) is None

    replica_a.add_faces("c", "alice", [make_face(alice)])

    assert top_subject(replica_b, "c", near(alice)) == "alice"
    assert replica_b.get_subject("c", "alice")[0].face_count == 1
    assert replica_b.best_match_for_subject("c", "alice", alice).similarity > 0.99


def test_a_subject_deleted_on_one_replica_is_never_matched_on_another(
    open_replica: OpenReplica, unit_vectors: UnitVectors, make_face: MakeFace
) -> None:
    replica_a, replica_b = open_replica(), open_replica()
    alice, bob = unit_vectors(2)
    replica_a.add_faces("c", "alice", [make_face(alice), make_face()])
    replica_a.add_faces("c", "bob", [make_face(bob)])
    assert top_subject(replica_a, "c", alice) == "alice"

    assert replica_b.delete_subject("c", "alice") == 2

    assert top_subject(replica_a, "c", alice) == "bob"
    with pytest.raises(SubjectNotFound):
        replica_a.best_match_for_subject("c", "alice", alice)
    with pytest.raises(SubjectNotFound):
        replica_a.get_subject("c", "alice")


def test_counters_and_versions_follow_the_other_replicas(
    open_replica: OpenReplica, make_face: MakeFace
) -> None:
    replica_a, replica_b = open_replica(), open_replica()
    replica_a.add_faces("c", "alice", [make_face(), make_face()])
    replica_a.add_faces_bulk("d", [("bob", make_face())])

    assert eventually(replica_b.stats, {"c": 2, "d": 1}) == {"c": 2, "d": 1}
    version = replica_a.collection_version("c")
    assert eventually(lambda: replica_b.collection_version("c"), version) == version

    [(record, _)] = replica_b.add_faces("c", "carol", [make_face()])
    replica_b.delete_face("c", record.face_id)
    later = replica_b.collection_version("c")
    assert later != version
    assert eventually(lambda: replica_a.collection_version("c"), later) == later
    assert eventually(replica_a.stats, {"c": 2, "d": 1}) == {"c": 2, "d": 1}


def test_a_new_replica_starts_with_the_current_counters(
    open_replica: OpenReplica, make_face: MakeFace
) -> None:
    first = open_replica()
    first.add_faces("c", "alice", [make_face(), make_face()])

    late = open_replica()

    assert late.stats() == {"c": 2}
    assert late.collection_version("c") == first.collection_version("c")


def test_changes_made_in_psql_reach_every_replica(
    open_replica: OpenReplica, postgres_url: str, make_face: MakeFace
) -> None:
    replica_a, replica_b = open_replica(), open_replica()
    replica_a.add_faces("c", "alice", [make_face(), make_face()])
    replica_a.add_faces("c", "bob", [make_face()])
    assert eventually(replica_b.stats, {"c": 3}) == {"c": 3}
    version = replica_b.collection_version("c")

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(  # an operator's clean-up, behind the service's back
            "DELETE FROM subjects WHERE name = 'alice'"
        )

    for replica in (replica_a, replica_b):
        assert eventually(replica.stats, {"c": 1}) == {"c": 1}
        assert replica.collection_version("c") != version
        assert replica.list_subjects("c", limit=10, offset=0)[1] == 1


def test_a_replica_whose_listener_was_cut_catches_up(
    open_replica: OpenReplica,
    postgres_url: str,
    make_face: MakeFace,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    replica_a, replica_b = open_replica(), open_replica()
    replica_a.add_faces("c", "alice", [make_face()])
    assert eventually(replica_b.stats, {"c": 1}) == {"c": 1}
    notifications = replica_b._database.notifications
    reconnect = threading.Event()
    real_connect = notifications._connect

    def connect_when_allowed() -> psycopg.Connection[Any]:
        if not reconnect.is_set():
            raise psycopg.OperationalError("the network is down (test)")
        return real_connect()

    monkeypatch.setattr(notifications, "_connect", connect_when_allowed)
    assert terminate_listeners(postgres_url) == 2
    assert eventually(lambda: notifications.live, False) is False
    replica_a.add_faces("c", "bob", [make_face(), make_face()])  # B cannot hear of this
    assert eventually(replica_a.stats, {"c": 3}) == {"c": 3}
    assert replica_b.stats() == {"c": 1}  # stale, and says so: not live

    reconnect.set()

    assert eventually(lambda: notifications.live, True) is True
    assert replica_b.stats() == {"c": 3}  # re-read on reconnecting
    version = replica_a.collection_version("c")
    assert replica_b.collection_version("c") == version
