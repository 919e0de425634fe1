"""An exclusive advisory lock on the gallery directory.

The FAISS index is an in-memory cache of SQLite. A second ``Gallery`` on the
same directory (another uvicorn worker, a CLI run next to the server) would
write rows the first one's cache never sees, so only one may be open at a
time. ``flock`` locks are released by the kernel when the process dies, so a
killed server never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from app.errors import GalleryUnavailable

LOCK_FILENAME = "gallery.lock"


class DirectoryLock:
    """Holds ``LOCK_FILENAME`` in a directory exclusively until ``release``."""

    def __init__(self, directory: Path) -> None:
        path = directory / LOCK_FILENAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise GalleryUnavailable(
                f"The gallery in {directory} is already open (held by pid {holder}). "
                "Run a single worker per data directory, or point FACEREC_DATA_DIR elsewhere",
                path=str(directory),
                holder_pid=holder,
                locked=True,
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Unlock; safe to call more than once."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
