"""The test server helper cleans up after test runs that were killed mid-way."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.pgserver import PostgresServer, reap_orphans

REPO = Path(__file__).resolve().parents[2]
# Starts a server, says where, then waits to be killed (no teardown runs).
OWNER = textwrap.dedent(
    """
    import sys, time
    from tests.pgserver import PostgresServer
    server = PostgresServer()
    print(server.root, flush=True)
    time.sleep(600)
    """
)


def test_a_server_whose_owner_was_killed_is_stopped_and_deleted(
    postgres_server: PostgresServer,
) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    root = Path(owner.stdout.readline().strip())
    assert (root / "data" / "postmaster.pid").exists()
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=30)

    reaped = reap_orphans(root.parent)

    assert root in reaped
    assert not root.exists()
    assert postgres_server.root not in reaped  # the live session's server stays
    assert postgres_server.running
