"""Which backend a process gets, and what it needs installed for it.

FACEREC_DATABASE_URL unset: the embedded gallery, and the PostgreSQL driver is never
imported (the ``postgres`` extra stays optional). Set: PostgreSQL; without the driver,
or without a reachable database, ``facerec serve`` exits 1 with one line saying why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.config import Settings
from app.errors import GalleryUnavailable
from app.storage.postgres import open_database
from tests.pgserver import free_port

REPO = Path(__file__).resolve().parents[2]
# Makes ``import psycopg`` (and the pool) fail as on an install without the extra.
WITHOUT_DRIVER = textwrap.dedent(
    """
    import sys

    class NoDriver:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"psycopg", "psycopg_pool", "psycopg_binary"}:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoDriver())
    """
)


def run_python(code: str, models_dir: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    environment.update({f"FACEREC_{name.upper()}": value for name, value in settings.items()})
    environment.update(FACEREC_MODELS_DIR=str(models_dir), PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_service_builds_without_the_postgres_driver_when_no_url_is_set(
    models_dir: Path, tmp_path: Path
) -> None:
    code = WITHOUT_DRIVER + textwrap.dedent(
        """
        from app.config import Settings
        from app.main import build_runtime

        runtime = build_runtime(Settings())
        print(type(runtime.service.gallery).__name__, runtime.database)
        runtime.close()
        assert not any(name.startswith("psycopg") for name in sys.modules), sorted(sys.modules)
        """
    )
    result = run_python(code, models_dir, data_dir=str(tmp_path / "data"), auth="off")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["EmbeddedGallery", "None"]


def test_serve_with_a_url_but_no_driver_exits_with_one_line_naming_the_extra(
    models_dir: Path, tmp_path: Path
) -> None:
    # A port of its own: a service already on 8000 must not change what this test sees.
    serve = f"sys.exit(main(['serve', '--port', '{free_port()}']))\n"
    code = WITHOUT_DRIVER + "from app.cli import main\n" + serve
    result = run_python(
        code,
        models_dir,
        data_dir=str(tmp_path / "data"),
        database_url="postgresql://facerec:hunter2@127.0.0.1:5432/facerec",
    )

    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("facerec: error")]
    assert len(lines) == 1, result.stderr
    assert "pip install 'facerec[cpu,postgres]'" in lines[0]
    assert "hunter2" not in result.stderr + result.stdout


def test_serve_with_an_unreachable_database_exits_with_one_line_and_no_password(
    models_dir: Path, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    serve = f"sys.exit(main(['serve', '--port', '{free_port()}']))\n"
    code = "import sys\nfrom app.cli import main\n" + serve
    result = run_python(
        code,
        models_dir,
        data_dir=str(tmp_path / "data"),
        database_url=f"postgresql://facerec:hunter2@127.0.0.1:{port}/facerec",
        database_startup_timeout_s="1",
    )

    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("facerec: error")]
    assert len(lines) == 1, result.stderr
    assert "[database_unavailable]" in lines[0]
    assert f"127.0.0.1:{port}/facerec" in lines[0]
    assert "hunter2" not in result.stderr + result.stdout
    assert not (tmp_path / "data").exists()  # the embedded gallery was not opened instead


def test_an_empty_database_url_means_the_embedded_gallery() -> None:
    assert Settings(database_url="").database_url is None  # type: ignore[arg-type]
    assert Settings(database_url="  ").database_url is None  # type: ignore[arg-type]


def test_a_url_of_another_database_is_refused_without_repeating_it() -> None:
    with pytest.raises(GalleryUnavailable, match="must be a PostgreSQL URL") as raised:
        open_database("mysql://facerec:hunter2@db/facerec")
    assert "hunter2" not in raised.value.message
