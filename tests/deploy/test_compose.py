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


def run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("docker-compose")
    if executable is None:
        message = "docker-compose is not installed (apt-get install docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; .ci/run installs it")
        pytest.skip(message)
    # Only the file's own defaults: the caller's FACEREC_* must not change what is checked.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FACEREC_", "COMPOSE_"))}
    return subprocess.run(
        [executable, "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), *args],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("profile", [(), ("--profile", "gpu")], ids=["default", "gpu-profile"])
def test_compose_file_is_valid_for_docker_compose(profile: tuple[str, ...]) -> None:
    result = run_compose(*profile, "config", "--quiet")

    assert result.returncode == 0, result.stderr


def test_docker_compose_sees_both_services() -> None:
    result = run_compose("--profile", "gpu", "config", "--services")

    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == ["facerec", "facerec-gpu"]


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


@pytest.mark.parametrize("name", ["facerec", "facerec-gpu"])
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
