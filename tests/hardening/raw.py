"""Raw-socket HTTP clients for the hostile tests: lying, slow and trickling clients that
httpx will not impersonate, plus the server's peak memory per case."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Generous caps on waits for something that should happen at once (a refusal from the
# headers) or promptly (the server's own timeouts of a few seconds); they are deadlines
# for a hang, not performance assertions.
ANSWER_CAP_S = 30.0
# A well-formed start of a multipart upload (boundary "hostile"): what follows is the
# file's bytes, trickled.
PART_START = (
    b'--hostile\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
    b"Content-Type: image/jpeg\r\n\r\n"
)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_CAP_S)
    sock.settimeout(ANSWER_CAP_S)
    return sock


def request_head(
    method: str, path: str, headers: dict[str, str], *, content_length: int | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_response(sock: socket.socket) -> RawResponse:
    """One response (Content-Length framed, as the service answers); raises on EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawResponse(int(status_line.split()[1]), headers, body[:length])


def closed_by_server(sock: socket.socket) -> bool:
    """Wait (up to the cap) until the server closes its side; False if it never does."""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@dataclass
class Trickler:
    """Sends ``head`` and then one body byte every ``interval_s`` until stopped, from a
    thread; a failure to send (the server cut the connection) ends it quietly and is
    recorded, any other exception is recorded for the test to assert on."""

    port: int
    head: bytes
    interval_s: float = 0.5
    sock: socket.socket = field(init=False)
    stopped: threading.Event = field(default_factory=threading.Event)
    cut: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    thread: threading.Thread = field(init=False)

    def start(self) -> Trickler:
        self.sock = connect(self.port)
        self.sock.sendall(self.head)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self.stopped.wait(self.interval_s):
                self.sock.sendall(b"x")
        except (BrokenPipeError, ConnectionResetError):
            self.cut.set()
        except BaseException as exc:  # collected: asserted by the test
            self.errors.append(exc)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=ANSWER_CAP_S)
        self.sock.close()


def reset_peak_memory(pid: int) -> None:
    """Reset the process's resident-memory high-water mark (Linux ``clear_refs`` 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_memory(pid: int) -> int:
    """Bytes: the process's resident-memory high-water mark (VmHWM) since the last reset."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def wait_until(predicate: object, cap_s: float = ANSWER_CAP_S) -> bool:
    """Poll ``predicate()`` until true or the cap passes (event-driven wait, generous cap)."""
    assert callable(predicate)
    deadline = time.monotonic() + cap_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())
