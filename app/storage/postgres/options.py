"""How the service talks to PostgreSQL: pool size and timeouts (plain values, no driver)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DatabaseOptions:
    """Connection settings of one process; the composition root fills them from Settings."""

    # Pooled connections: at most ``pool_size``, at least one kept open. The
    # notification listener holds one more connection of its own.
    pool_size: int = 8
    # Longest wait for a pooled connection (and for a new one to be made) before a
    # request fails with DatabaseUnavailable. Short: a client should get a 503 it can
    # retry elsewhere, never a request that hangs while the database is away.
    timeout_s: float = 2.0
    # Statements running longer are cancelled (DatabaseUnavailable); 0 = no limit.
    statement_timeout_s: float = 30.0
    # At start-up: how long to wait for the database and for other replicas' migrations.
    startup_timeout_s: float = 30.0
    application_name: str = "facerec"

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {self.pool_size}")
        if self.timeout_s <= 0 or self.startup_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.statement_timeout_s < 0:
            raise ValueError("statement_timeout_s must not be negative")
