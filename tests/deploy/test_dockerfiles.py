"""docker/Dockerfile (CPU) and docker/Dockerfile.gpu, read as text: no Docker engine here.

They must install the project the way CI does (the pyproject extra of their flavour, the
``facerec`` console script, the ``serve`` command) and run it as an unprivileged user.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from app import cli

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# flavour -> (Dockerfile, the onnxruntime distribution its extra must install)
IMAGES = {
    "cpu": ("docker/Dockerfile", "onnxruntime"),
    "gpu": ("docker/Dockerfile.gpu", "onnxruntime-gpu"),
}
ONNXRUNTIME_REQUIREMENT = re.compile(r"^(onnxruntime(?:-gpu)?)\b")


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int  # index of the FROM it belongs to


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with line continuations joined; comments and blank lines dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, f"{path} ends inside a continued line"
    instructions: list[Instruction] = []
    stage = -1
    for text in logical:
        keyword, _, arguments = text.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), arguments.strip(), stage))
    return instructions


def of(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [instruction for instruction in instructions if instruction.keyword == keyword]


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = instructions[-1].stage
    return [instruction for instruction in instructions if instruction.stage == last]


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT/CMD/HEALTHCHECK CMD."""
    text = instruction.arguments
    start = text.index("[")
    words = json.loads(text[start:])
    assert isinstance(words, list)
    return [str(word) for word in words]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction in of(instructions, "ENV"):
        for word in shlex.split(instruction.arguments):
            name, _, value = word.partition("=")
            values[name] = value
    return values


def arg_default(instructions: list[Instruction], name: str) -> str:
    for instruction in of(instructions, "ARG"):
        key, _, value = instruction.arguments.partition("=")
        if key == name:
            return value
    raise AssertionError(f"no ARG {name}")


@pytest.fixture(params=sorted(IMAGES), ids=lambda flavour: f"{flavour}-image")
def image(request: pytest.FixtureRequest) -> tuple[str, list[Instruction], str]:
    """(flavour, instructions, onnxruntime distribution) of each Dockerfile."""
    flavour: str = request.param
    dockerfile, distribution = IMAGES[flavour]
    return flavour, parse_dockerfile(REPO / dockerfile), distribution


def test_each_extra_installs_exactly_its_onnxruntime_build() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]

    for flavour, (_, distribution) in IMAGES.items():
        builds = [
            found.group(1)
            for requirement in extras[flavour]
            if (found := ONNXRUNTIME_REQUIREMENT.match(requirement))
        ]
        assert builds == [distribution], f"[{flavour}] extra installs {builds}"


def test_image_pip_installs_the_project_with_its_own_extra_only(
    image: tuple[str, list[Instruction], str],
) -> None:
    flavour, instructions, _ = image
    installs = [
        shlex.split(command.split("pip install", 1)[1].split("&&")[0])
        for run in of(instructions, "RUN")
        for command in run.arguments.split("&&")
        if "pip install" in command
    ]

    # Its onnxruntime flavour, and the PostgreSQL driver (an image serves both backends).
    assert installs == [[f".[{flavour},postgres]"]], installs
    # No onnxruntime of either build installed by name beside the extra.
    every_run = " ".join(run.arguments for run in of(instructions, "RUN"))
    assert not re.search(r"\bonnxruntime(-gpu)?\b", every_run)


def test_image_build_fails_unless_only_its_onnxruntime_build_is_installed(
    image: tuple[str, list[Instruction], str],
) -> None:
    flavour, instructions, _ = image
    runs = [run.arguments for run in of(instructions, "RUN")]

    assert f"python /tmp/check_onnxruntime.py {flavour}" in runs
    copied = [copy.arguments for copy in of(instructions, "COPY")]
    assert "docker/check_onnxruntime.py /tmp/check_onnxruntime.py" in copied


def test_image_is_multi_stage_and_ships_only_the_builders_venv(
    image: tuple[str, list[Instruction], str],
) -> None:
    _, instructions, _ = image
    runtime = final_stage(instructions)

    assert len(of(instructions, "FROM")) >= 2
    assert [copy.arguments for copy in of(runtime, "COPY")] == [
        "--from=builder /opt/venv /opt/venv"
    ]
    assert env_of(runtime)["PATH"].startswith("/opt/venv/bin:")


def test_cpu_image_is_python_slim_and_gpu_image_is_cuda_with_cudnn() -> None:
    cpu = parse_dockerfile(REPO / IMAGES["cpu"][0])
    gpu = parse_dockerfile(REPO / IMAGES["gpu"][0])

    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", arg_default(cpu, "PYTHON_IMAGE"))
    assert re.fullmatch(
        r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", arg_default(gpu, "CUDA_IMAGE")
    )


def test_entrypoint_is_the_projects_console_script_and_cmd_a_valid_serve(
    image: tuple[str, list[Instruction], str],
) -> None:
    _, instructions, _ = image
    runtime = final_stage(instructions)
    (entrypoint,) = of(runtime, "ENTRYPOINT")
    (command,) = of(runtime, "CMD")

    assert exec_form(entrypoint) == ["facerec"]
    assert PYPROJECT["project"]["scripts"]["facerec"] == "app.cli:main"
    args = cli.build_parser().parse_args(exec_form(command))
    assert isinstance(args, argparse.Namespace)
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", 8000)
    assert of(runtime, "EXPOSE")[0].arguments == "8000"


def test_runtime_runs_as_an_unprivileged_user(
    image: tuple[str, list[Instruction], str],
) -> None:
    _, instructions, _ = image
    users = of(final_stage(instructions), "USER")

    assert users, "no USER in the runtime stage: the service would run as root"
    assert users[-1].arguments not in {"root", "0", "0:0"}


def test_models_and_gallery_are_volumes_the_settings_point_at(
    image: tuple[str, list[Instruction], str],
) -> None:
    _, instructions, _ = image
    runtime = final_stage(instructions)
    (volume,) = of(runtime, "VOLUME")
    environment = env_of(runtime)

    assert json.loads(volume.arguments) == ["/models", "/data"]
    assert environment["FACEREC_MODELS_DIR"] == "/models"
    assert environment["FACEREC_DATA_DIR"] == "/data"


def test_gpu_image_requests_cuda_and_the_cpu_image_leaves_the_cpu_default() -> None:
    cpu = env_of(final_stage(parse_dockerfile(REPO / IMAGES["cpu"][0])))
    gpu = env_of(final_stage(parse_dockerfile(REPO / IMAGES["gpu"][0])))

    assert "FACEREC_PROVIDERS" not in cpu
    assert gpu["FACEREC_PROVIDERS"] == "CUDAExecutionProvider,CPUExecutionProvider"


def test_gpu_image_settings_refuse_to_serve_on_a_machine_without_cuda(
    models_dir: Path, tmp_path: Path
) -> None:
    """No silent CPU fallback: ``facerec serve`` exits 1 with one line naming the cause."""
    image_env = env_of(final_stage(parse_dockerfile(REPO / IMAGES["gpu"][0])))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACEREC_")}
    environment.update(
        FACEREC_PROVIDERS=image_env["FACEREC_PROVIDERS"],
        FACEREC_MODELS_DIR=str(models_dir),
        FACEREC_DATA_DIR=str(tmp_path / "data"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "0"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("facerec: error: [provider_unavailable] ")
    assert "CUDAExecutionProvider" in line


def test_healthcheck_probes_health_with_python(
    image: tuple[str, list[Instruction], str],
) -> None:
    _, instructions, _ = image
    (healthcheck,) = of(final_stage(instructions), "HEALTHCHECK")
    probe = exec_form(healthcheck)

    assert probe[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8000/health" in probe[2]


# --- .dockerignore ---------------------------------------------------------------------


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or a parent decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!")
        globs = [body, body.removeprefix("**/")] if body.startswith("**/") else [body]
        if any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs):
            excluded = not negated
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_admits_what_the_images_copy(
    image: tuple[str, list[Instruction], str],
) -> None:
    _, instructions, _ = image
    patterns = dockerignore_patterns()
    sources = [
        source
        for copy in of(instructions, "COPY")
        if not copy.arguments.startswith("--from")
        for source in shlex.split(copy.arguments)[:-1]
    ]

    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not dockerignore_excludes(source, patterns), source


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "app/__pycache__/main.cpython-311.pyc",
        "models-data/scrfd_500m.onnx",
        "data/gallery.sqlite3",
        ".mypy_cache/3.11/app",
        "bench/results/x.json",
    ],
)
def test_dockerignore_keeps_environments_tests_data_and_caches_out(path: str) -> None:
    assert dockerignore_excludes(path, dockerignore_patterns())


# --- docker/check_onnxruntime.py, the build-time check ----------------------------------


@pytest.fixture(scope="module")
def checker() -> ModuleType:
    path = REPO / "docker" / "check_onnxruntime.py"
    spec = importlib.util.spec_from_file_location("check_onnxruntime", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_passes_for_the_cpu_build_installed_here(checker: ModuleType) -> None:
    assert checker.check("cpu") == ""
    assert checker.main(["cpu"]) == 0


def test_check_fails_the_gpu_flavour_on_the_cpu_build(checker: ModuleType) -> None:
    assert checker.check("gpu") == "expected only onnxruntime-gpu installed, found ['onnxruntime']"
    assert checker.main(["gpu"]) == 1


def test_check_fails_when_both_builds_are_installed(
    checker: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checker, "installed_builds", lambda: ["onnxruntime", "onnxruntime-gpu"])

    for flavour in IMAGES:
        assert "found ['onnxruntime', 'onnxruntime-gpu']" in checker.check(flavour)


def test_check_usage_error_exits_2(checker: ModuleType) -> None:
    assert checker.main([]) == 2
    assert checker.main(["tpu"]) == 2
