"""Exit 0 when this repository is already installed in the running Python with EXTRAS.

Usage: .venv/bin/python scripts/installed.py cpu,test

"Installed" means: the ``facerec`` distribution is an editable install of this very
folder, and every requirement of ``pyproject.toml`` (the core list and the named
extras) is present at a version it allows. scripts/setup.sh runs pip only when this
says no, so starting the service needs no package index once it has been set up.
Standard library only (plus the ``packaging`` that every pip carries).
"""

from __future__ import annotations

import json
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare venv: pip vendors the same module
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
# Installed by scripts/setup.sh beside the test extra, with --no-deps.
EXTRA_TOOLS = {"test": ["insightface==2.1"]}


def problems(extras: list[str]) -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        if extra not in project["optional-dependencies"]:
            return [f"unknown extra {extra!r}"]
        wanted += project["optional-dependencies"][extra] + EXTRA_TOOLS.get(extra, [])
    found = [] if _installed_from_here() else ["facerec is not installed from this folder"]
    for line in wanted:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            found.append(f"{requirement.name} is missing")
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            found.append(f"{requirement.name} {version} does not satisfy {requirement}")
    return found


def _installed_from_here() -> bool:
    try:
        distribution = metadata.distribution("facerec")
    except metadata.PackageNotFoundError:
        return False
    direct_url = distribution.read_text("direct_url.json")
    if not direct_url:
        return False
    origin = json.loads(direct_url)
    if not origin.get("dir_info", {}).get("editable"):
        return False
    location = urlparse(origin.get("url", ""))
    return location.scheme == "file" and Path(unquote(location.path)).resolve() == REPO


def main(argv: list[str]) -> int:
    extras = [extra for extra in (argv[0] if argv else "").split(",") if extra]
    found = problems(extras)
    for problem in found:
        print(f"setup needed: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
