"""``facerec models activate MANIFEST`` / ``facerec models rollback`` / ``generations``.

A running server owns its gallery (one process per embedded gallery), so these
commands ask it over HTTP, with an admin key from ``FACEREC_API_KEY`` (never a
command-line argument: process listings show those). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from app.errors import FaceRecError

API_KEY_ENV = "FACEREC_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"
# How often --wait polls /ready, and for how long at most.
POLL_S = 1.0
WAIT_LIMIT_S = 24 * 3600.0
_RUNNING = ("loading", "copying", "switching")


class ServerError(FaceRecError):
    """The server answered with an error; its code and message are passed on."""

    code = "server_error"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]  # the server's stable code, per instance


def add_swap_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    server.add_argument(
        "--no-wait",
        action="store_true",
        help="return once started (default: wait, showing progress)",
    )
    activate = actions.add_parser(
        "activate",
        parents=[server],
        help="switch the running server to another recognizer (no downtime)",
        description="Re-embed the running server's gallery with the recognizer of MANIFEST "
        f"and switch to it. Needs an admin key in {API_KEY_ENV}.",
    )
    activate.add_argument("manifest", metavar="MANIFEST", help="recognizer manifest path")
    activate.add_argument(
        "--force", action="store_true", help="even if the promotion gate decided against it"
    )
    activate.set_defaults(handler=_activate)
    rollback = actions.add_parser(
        "rollback",
        parents=[server],
        help="return the running server to its previous gallery generation",
    )
    rollback.set_defaults(handler=_rollback)
    listing = actions.add_parser(
        "generations", help="the running server's gallery generations (JSON)"
    )
    listing.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    listing.set_defaults(handler=_generations)


def _activate(args: argparse.Namespace) -> int:
    manifest = os.path.abspath(os.path.expanduser(args.manifest))
    body = {"manifest": manifest, "force": args.force}
    started = _call(args.url, "POST", "/admin/models/activate", body)
    return _follow(args, started)


def _rollback(args: argparse.Namespace) -> int:
    return _follow(args, _call(args.url, "POST", "/admin/models/rollback", {}))


def _generations(args: argparse.Namespace) -> int:
    print(json.dumps(_call(args.url, "GET", "/admin/models"), indent=2))
    return 0


def _follow(args: argparse.Namespace, started: dict[str, Any]) -> int:
    print(f"{started['action']} to {started['target_model_id']}: started", file=sys.stderr)
    if args.no_wait:
        return 0
    deadline = time.monotonic() + WAIT_LIMIT_S
    while time.monotonic() < deadline:
        swap = _call(args.url, "GET", "/ready").get("swap") or {}
        print(
            f"\r{swap.get('state')}: {swap.get('faces_done')}/{swap.get('faces_total')} faces",
            end="",
            file=sys.stderr,
        )
        if swap.get("state") not in _RUNNING:
            print(file=sys.stderr)
            if swap.get("state") != "done":
                raise ServerError(
                    swap.get("error_code") or "model_swap_failed",
                    f"the {swap.get('action')} ended {swap.get('state')}; see the server log",
                )
            print(f"generation {swap.get('target_generation')} serves {swap['target_model_id']}")
            return 0
        time.sleep(POLL_S)
    raise ServerError("timeout", "gave up waiting; the job goes on (see /ready)")


def _call(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    key = os.environ.get(API_KEY_ENV)
    if key:
        headers["X-API-Key"] = key
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        url.rstrip("/") + path, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())
        except ValueError:
            error = {}
        raise ServerError(
            str(error.get("code", f"http_{exc.code}")), str(error.get("message", exc.reason))
        ) from None
    except urllib.error.URLError as exc:
        raise OSError(f"cannot reach {url}: {exc.reason}") from None
