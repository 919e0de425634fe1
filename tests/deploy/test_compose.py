"""docker-compose.yml: valid for Compose, and consistent with the images and the app.

Validation runs the Debian ``docker-compose`` (1.29, which checks the file against the
Compose specification's JSON schema, profiles and device reservations included); CI
installs it (.ci/run). No Docker engine is needed, and none is here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.config import Settings
from app.main import create_app

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
# onnxruntime gives each node to the first listed provider that can run it: the most
# specialised first. Lower rank, earlier in FACEREC_PROVIDERS.
PROVIDER_RANK = {
    "TensorrtExecutionProvider": 0,
    "CUDAExecutionProvider": 1,
    "CPUExecutionProvider": 2,
}
POSTGRES_REPLICAS = ["facerec-pg-1", "facerec-pg-2"]
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}")


def load_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def resolved(value: object) -> str:
    """``${NAME:-default}`` as Compose resolves it when NAME is not set."""
    return INTERPOLATION.sub(lambda found: found["default"] or "", str(value))


def service(name: str) -> dict[str, Any]:
    services = load_compose()["services"]
    assert isinstance(services, dict)
    found = services[name]
    assert isinstance(found, dict)
    return found


def environment(name: str) -> dict[str, str]:
    return {key: resolved(value) for key, value in service(name)["environment"].items()}


def run_compose(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("docker-compose")
    if executable is None:
        message = "docker-compose is not installed (apt-get install docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; .ci/run installs it")
        pytest.skip(message)
    # Only the file's own defaults: the caller's FACEREC_* must not change what is checked.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FACEREC_", "COMPOSE_"))}
    clean.update(variables)
    return subprocess.run(
        [executable, "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), *args],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "profile",
    [(), ("--profile", "gpu"), ("--profile", "postgres")],
    ids=["default", "gpu-profile", "postgres-profile"],
)
def test_compose_file_is_valid_for_docker_compose(profile: tuple[str, ...]) -> None:
    result = run_compose(*profile, "config", "--quiet")

    assert result.returncode == 0, result.stderr


def test_docker_compose_sees_every_service() -> None:
    result = run_compose("--profile", "gpu", "--profile", "postgres", "config", "--services")

    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == [
        "facerec",
        "facerec-gpu",
        *POSTGRES_REPLICAS,
        "postgres",
    ]


def test_cpu_service_builds_the_cpu_image_and_is_in_no_profile() -> None:
    cpu = service("facerec")

    assert cpu["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}
    assert "profiles" not in cpu
    assert "deploy" not in cpu
    assert environment("facerec")["FACEREC_PROVIDERS"] == "CPUExecutionProvider"


def test_gpu_service_builds_the_gpu_image_and_reserves_one_nvidia_gpu() -> None:
    gpu = service("facerec-gpu")

    assert gpu["build"] == {"context": ".", "dockerfile": "docker/Dockerfile.gpu"}
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_gpu_service_requests_cuda_in_priority_order() -> None:
    providers = environment("facerec-gpu")["FACEREC_PROVIDERS"].split(",")
    settings = Settings(providers=",".join(providers))  # type: ignore[arg-type]

    assert settings.providers == providers
    assert "CUDAExecutionProvider" in providers
    assert all(name in PROVIDER_RANK for name in providers), providers
    assert providers == sorted(providers, key=PROVIDER_RANK.__getitem__)


@pytest.mark.parametrize("name", ["facerec", "facerec-gpu", *POSTGRES_REPLICAS])
def test_every_facerec_variable_is_a_setting(name: str) -> None:
    fields = {f"FACEREC_{field.upper()}" for field in Settings.model_fields}
    variables = environment(name)

    assert set(variables) <= fields, sorted(set(variables) - fields)
    Settings(**{key.removeprefix("FACEREC_").lower(): value for key, value in variables.items()})


@pytest.mark.parametrize("name", ["facerec", "facerec-gpu"])
def test_models_are_a_host_folder_and_the_gallery_a_named_volume(name: str) -> None:
    pairs = [resolved(volume).rsplit(":", 1) for volume in service(name)["volumes"]]
    mounts = {target: source for source, target in pairs}
    variables = environment(name)

    assert mounts["/models"] == "./models-data"
    assert variables["FACEREC_MODELS_DIR"] == "/models"
    assert variables["FACEREC_DATA_DIR"] == "/data"
    assert mounts["/data"] in load_compose()["volumes"]


def test_each_service_has_its_own_gallery_and_host_port() -> None:
    """Both may run at once: one server process per gallery, one service per port."""
    cpu, gpu = service("facerec"), service("facerec-gpu")

    assert {resolved(port) for port in cpu["ports"]} == {"8000:8000"}
    assert {resolved(port) for port in gpu["ports"]} == {"8001:8000"}
    assert cpu["volumes"][1] != gpu["volumes"][1]


@pytest.mark.parametrize("name", ["facerec", "facerec-gpu"])
def test_healthcheck_probes_a_get_route_of_the_app(name: str) -> None:
    probe = service(name)["healthcheck"]["test"]
    found = re.search(r"http://127\.0\.0\.1:8000(?P<path>/\w*)", probe[-1])
    paths = create_app().openapi()["paths"]

    assert probe[:3] == ["CMD", "python", "-c"]
    assert found is not None
    assert found["path"] == "/health"
    assert "get" in paths["/health"]


# --- profile postgres: replicas on one PostgreSQL + pgvector --------------------------------


def test_postgres_service_is_the_official_pgvector_image_with_a_volume_and_healthcheck() -> None:
    database = service("postgres")
    mounts = dict(resolved(volume).rsplit(":", 1)[::-1] for volume in database["volumes"])

    assert database["profiles"] == ["postgres"]
    assert database["image"] == "pgvector/pgvector:pg17"
    assert mounts["/var/lib/postgresql/data"] in load_compose()["volumes"]
    probe = database["healthcheck"]["test"]
    assert probe[0] == "CMD-SHELL"
    assert "pg_isready" in probe[1]
    assert "ports" not in database  # reached by the replicas only, never from the host


def test_postgres_has_no_default_password() -> None:
    variables = {k: str(v) for k, v in service("postgres")["environment"].items()}
    assert resolved(variables["POSTGRES_PASSWORD"]) == ""  # unset: the image refuses to start
    assert "FACEREC_POSTGRES_PASSWORD" in variables["POSTGRES_PASSWORD"]


@pytest.mark.parametrize("name", POSTGRES_REPLICAS)
def test_replicas_use_the_postgres_service_once_it_is_healthy(name: str) -> None:
    replica = service(name)
    database = {k: str(v) for k, v in service("postgres")["environment"].items()}
    url = urlsplit(environment(name)["FACEREC_DATABASE_URL"])

    assert replica["profiles"] == ["postgres"]
    assert replica["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432)
    assert url.username == database["POSTGRES_USER"]
    assert url.path == f"/{database['POSTGRES_DB']}"
    assert "FACEREC_POSTGRES_PASSWORD" in replica["environment"]["FACEREC_DATABASE_URL"]
    assert replica["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}
    assert [resolved(volume) for volume in replica["volumes"]] == ["./models-data:/models"]


def test_replicas_have_their_own_host_ports() -> None:
    ports = [resolved(port) for name in POSTGRES_REPLICAS for port in service(name)["ports"]]
    published = {port.split(":")[0] for port in ports}

    assert ports == ["8010:8000", "8011:8000"]
    assert not published & {"8000", "8001"}


def test_the_password_reaches_database_and_replicas_alike() -> None:
    result = run_compose("--profile", "postgres", "config", FACEREC_POSTGRES_PASSWORD="s3cret-pw")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]

    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret-pw"
    for name in POSTGRES_REPLICAS:
        url = urlsplit(services[name]["environment"]["FACEREC_DATABASE_URL"])
        assert url.password == "s3cret-pw"
