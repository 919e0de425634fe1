"""Build-time check of an image: exactly one onnxruntime build installed, the expected one.

Usage: ``python check_onnxruntime.py cpu|gpu`` (the image's pyproject extra). Exit 0 when
the flavour's distribution is the only onnxruntime installed and offers its execution
provider, else 1 with the reason. ``onnxruntime`` and ``onnxruntime-gpu`` install the same
``onnxruntime`` module and overwrite each other's files, so an image holding both runs
whichever was installed last. Checking what the build offers needs no GPU.
"""

from __future__ import annotations

import importlib.metadata
import sys

# flavour (the pyproject extra) -> (the distribution it installs, the provider it must offer)
FLAVOURS = {
    "cpu": ("onnxruntime", "CPUExecutionProvider"),
    "gpu": ("onnxruntime-gpu", "CUDAExecutionProvider"),
}


def installed_builds() -> list[str]:
    """Which onnxruntime distributions are installed, by their canonical names."""
    names = {
        (dist.metadata["Name"] or "").lower().replace("_", "-")
        for dist in importlib.metadata.distributions()
    }
    return sorted(name for name, _ in FLAVOURS.values() if name in names)


def check(flavour: str) -> str:
    """A problem description, or an empty string when the image is right."""
    distribution, provider = FLAVOURS[flavour]
    builds = installed_builds()
    if builds != [distribution]:
        return f"expected only {distribution} installed, found {builds or 'none'}"
    import onnxruntime

    offered = onnxruntime.get_available_providers()
    if provider not in offered:
        return f"{distribution} offers {offered}, not {provider}"
    return ""


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in FLAVOURS:
        print(f"usage: check_onnxruntime.py {'|'.join(FLAVOURS)}", file=sys.stderr)
        return 2
    problem = check(argv[0])
    if problem:
        print(f"check_onnxruntime: {problem}", file=sys.stderr)
        return 1
    print(f"check_onnxruntime: ok, only {FLAVOURS[argv[0]][0]} installed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
