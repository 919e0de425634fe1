"""Open the guard at start-up; on the very first start, create and show an admin key."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

from app.auth.guard import Guard
from app.auth.keys import IssuedKey
from app.auth.keystore import KeyStore
from app.auth.ratelimit import RateLimiter
from app.auth.store import KEYS_FILENAME, SqliteKeyStore

logger = logging.getLogger(__name__)
FIRST_KEY_BANNER = "FACEREC FIRST ADMIN API KEY"
_RULE = "=" * 72


def open_guard(
    data_dir: Path,
    *,
    enabled: bool,
    rate_per_s: float,
    burst: int,
    announce_to: TextIO | None = None,
    store: KeyStore | None = None,
) -> Guard:
    """The guard for this process. With ``enabled`` False nothing is opened or checked.

    ``store``: where keys live (the guard then owns it); default: the SQLite store
    in ``data_dir``.
    """
    if not enabled:
        logger.warning("API key authentication is OFF (FACEREC_AUTH=off): every caller is admin")
        return Guard(None)
    if store is None:
        store = SqliteKeyStore(data_dir / KEYS_FILENAME)
    try:
        issued = store.create_first_admin()
    except BaseException:
        store.close()
        raise
    if issued is not None:
        announce_first_admin_key(issued, announce_to or sys.stderr)
    limiter = RateLimiter(rate_per_s, burst) if rate_per_s > 0 else None
    return Guard(store, limiter)


def announce_first_admin_key(issued: IssuedKey, out: TextIO) -> None:
    """Print the secret once, on stderr, never through logging (logs get shipped)."""
    out.write(
        f"\n{_RULE}\n{FIRST_KEY_BANNER} (shown once: store it now)\n"
        f"  key id:    {issued.key.key_id}\n"
        f"  X-API-Key: {issued.token}\n"
        f"  For curl and the examples in the docs:  export FACEREC_KEY={issued.token}\n"
        "  Use it to create scoped keys: POST /keys. It is stored only as a hash.\n"
        f"{_RULE}\n\n"
    )
    out.flush()
    logger.warning(
        "created the first admin API key %s; its secret was printed once on stderr",
        issued.key.key_id,
    )
