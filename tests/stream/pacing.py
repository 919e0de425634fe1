"""Lock-step clients that also wait for the stream's background recognitions.

A stream answers a frame right after detection and recognises faces in the
background; a name shows on the first frame processed after its recognition
finished. A client that sends the next frame the moment an answer arrives races the
recognizer, so how many frames a name takes would depend on the machine's load. A
camera does not race it: frames come at its frame rate, slower than a recognition on
a machine sized for the stream. ``settle`` gives a test that pace, event-driven:
after an answer it waits until the app has no recognition in flight (the
``facerec_stream_recognitions_in_flight`` gauge), so frame counts mean "frames of a
camera the recognizer keeps up with" on a busy machine too.
"""

from __future__ import annotations

import re
import time

import httpx
from starlette.testclient import WebSocketTestSession

# Generous: a recognition takes milliseconds to seconds on a loaded 2-core machine.
SETTLE_CAP_S = 120.0


def settle(socket: WebSocketTestSession) -> None:
    """Return once the in-process app has no background recognition in flight."""
    metrics = socket.app.state.streams.metrics  # type: ignore[attr-defined]
    deadline = time.monotonic() + SETTLE_CAP_S
    while metrics.recognitions_in_flight():
        assert time.monotonic() < deadline, f"a recognition still runs after {SETTLE_CAP_S} s"
        time.sleep(0.002)


_IN_FLIGHT = re.compile(r"^facerec_stream_recognitions_in_flight (\S+)$", re.MULTILINE)


def settle_server(url: str, admin_key: str) -> None:
    """``settle`` for a real server process: polls its /metrics gauge (admin key)."""
    deadline = time.monotonic() + SETTLE_CAP_S
    while True:
        text = httpx.get(f"{url}/metrics", headers={"X-API-Key": admin_key}, timeout=30).text
        found = _IN_FLIGHT.search(text)
        assert found, "no facerec_stream_recognitions_in_flight in /metrics"
        if float(found.group(1)) == 0:
            return
        assert time.monotonic() < deadline, f"a recognition still runs after {SETTLE_CAP_S} s"
        time.sleep(0.01)
