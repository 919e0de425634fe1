"""A real, throwaway PostgreSQL server with pgvector for tests and benchmarks.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as
the ``postgres`` user (``runuser``) in a folder it owns under the system temp dir
(pytest's own tmp folders are private to root). It listens on 127.0.0.1 on a free
port and on a unix socket in its folder; local connections are trusted.

``scripts/install-postgres.sh`` installs PostgreSQL and builds pgvector. Use it
from a shell too (benchmarks, manual checks)::

    python -m tests.pgserver      # prints a FACEREC_DATABASE_URL; Ctrl-C stops and deletes
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PG_MAJOR = os.environ.get("FACEREC_PG_MAJOR", "15")
PG_BIN = Path(os.environ.get("FACEREC_PG_BIN", f"/usr/lib/postgresql/{PG_MAJOR}/bin"))
SERVER_USER = "postgres"
START_TIMEOUT_S = 60
INSTALL_HINT = "run scripts/install-postgres.sh (PostgreSQL 15 + pgvector from ../shared)"
# Small and quick for tests; HNSW builds want memory (benchmarks raise it).
SERVER_SETTINGS = {
    "max_connections": "200",
    "shared_buffers": "128MB",
    "maintenance_work_mem": "256MB",
    "listen_addresses": "'127.0.0.1'",
    "log_min_messages": "warning",
    "log_connections": "off",
    "logging_collector": "off",
}


ROOT_PREFIX = "facerec-pg-"
OWNER_FILE = "owner.pid"


class PostgresUnavailable(RuntimeError):
    """This machine cannot run the test server (not installed, pgvector missing)."""


def missing_pieces() -> str | None:
    """Why no server can start here, or None when PostgreSQL and pgvector are installed."""
    for program in ("initdb", "pg_ctl", "postgres", "pg_config"):
        if not (PG_BIN / program).is_file():
            return f"PostgreSQL {PG_MAJOR} is not installed ({PG_BIN / program} missing)"
    sharedir = _run_text([str(PG_BIN / "pg_config"), "--sharedir"])
    if not (Path(sharedir) / "extension" / "vector.control").is_file():
        return f"pgvector is not installed for PostgreSQL {PG_MAJOR}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"there is no {SERVER_USER!r} user to run PostgreSQL as"
    return None


def reap_orphans(temp_dir: Path | None = None) -> list[Path]:
    """Stop and delete servers whose owning process is gone (a test run that was
    killed before its teardown); returns their folders."""
    reaped = []
    for root in Path(temp_dir or tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        owner = root / OWNER_FILE
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or still being created
        if _alive(pid):
            continue
        data_dir = root / "data"
        if (data_dir / "postmaster.pid").exists():
            as_user = ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
            subprocess.run(
                [*as_user, str(PG_BIN / "pg_ctl"), "--pgdata", str(data_dir), "--mode",
                 "immediate", "--wait", "stop"],
                capture_output=True,
                check=False,
            )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """initdb + pg_ctl in a fresh folder; ``stop``/``start`` keep the data, ``destroy`` not."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        problem = missing_pieces()
        if problem:
            raise PostgresUnavailable(f"{problem}: {INSTALL_HINT}")
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
        # Who owns this server: a later session stops it if this process dies first.
        (self.root / OWNER_FILE).write_text(f"{os.getpid()}\n")
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log_path = self.root / "server.log"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self.socket_dir.mkdir()
        if self._as_user:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.socket_dir, account.pw_uid, account.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--username=postgres",
        )
        options = {
            **SERVER_SETTINGS,
            **(settings or {}),
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
        }
        with (self.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in options.items())
        self.start()

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "--pgdata",
            str(self.data_dir),
            "--log",
            str(self.log_path),
            "--wait",
            f"--timeout={START_TIMEOUT_S}",
            "start",
        )

    @property
    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clean shutdown; ``immediate``: like a crash (WAL replay at next start)."""
        if self.running:
            self._run("pg_ctl", "--pgdata", str(self.data_dir), "--mode", mode, "--wait", "stop")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- databases ------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser through psql; returns its unaligned output."""
        return _run_text(
            [
                str(PG_BIN / "psql"),
                "--no-psqlrc",
                "--quiet",
                "--tuples-only",
                "--no-align",
                "--set=ON_ERROR_STOP=1",
                f"--host={self.socket_dir}",
                f"--port={self.port}",
                "--username=postgres",
                f"--dbname={database}",
                "--command",
                sql,
            ]
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _run(self, program: str, *args: str) -> None:
        command = [*self._as_user, str(PG_BIN / program), *args]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stderr.strip()}\n{self.log()}"
            )


def _run_text(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def main() -> int:
    server = PostgresServer({"maintenance_work_mem": "2GB", "shared_buffers": "1GB"})
    print(f"FACEREC_DATABASE_URL={server.create_database('facerec')}", flush=True)
    print(f"data in {server.root}; Ctrl-C stops the server and deletes it", flush=True)
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        while not stop:
            time.sleep(0.5)
    finally:
        server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
