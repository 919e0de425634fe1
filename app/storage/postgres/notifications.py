"""LISTEN/NOTIFY: how a replica hears of changes other replicas committed.

One thread per process holds one connection that LISTENs on every subscribed
channel. After each (re)connection it first LISTENs, then asks every subscriber to
``resync`` (re-read what it caches), and only then delivers notifications: a
change committed while the listener was away is in the re-read, and one committed
after the LISTEN arrives as a notification, so nothing falls between the two.

``live`` is True only while the connection is up and every subscriber has re-read
since it was made: a cache whose owner may have missed a change can tell (the key
store then refuses to authenticate from it). A subscriber added later does not
make it False: the others' caches are still current, and ``subscribe`` itself
returns only once the new one has re-read. Any failure, the database's or a
subscriber's, drops the connection and starts over with a fresh re-read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from app.errors import DatabaseUnavailable
from app.storage.postgres.errors import CLIENT_MESSAGE, RETRY_AFTER_S

logger = logging.getLogger(__name__)

# First pause after a failure, doubled per failed attempt up to the maximum: the
# listener is back within RETRY_MAX_S of the database.
RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 2.0
# How often the thread looks up from waiting (new subscribers, close()).
POLL_S = 0.25


class Subscriber(Protocol):
    def resync(self) -> None:
        """Re-read everything cached (called in the listener thread after each connect)."""
        ...

    def notified(self, payload: str) -> None:
        """One notification on the subscribed channel (called in the listener thread)."""
        ...


@dataclass(eq=False)
class _Subscription:
    channel: str
    subscriber: Subscriber
    ready: threading.Event = field(default_factory=threading.Event)
    listening: bool = False


class Notifications:
    """The process's listener. ``connect`` opens an autocommit connection."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._subscriptions: list[_Subscription] = []
        self._stop = threading.Event()
        self._failing = False
        self._thread: threading.Thread | None = None
        self._live = False

    @property
    def live(self) -> bool:
        """Connected, and every subscriber re-read since (those subscribed since are
        re-read before their ``subscribe`` returns): caches are current."""
        return self._live

    def subscribe(self, channel: str, subscriber: Subscriber, *, timeout_s: float) -> None:
        """Deliver ``channel`` to ``subscriber``; returns once it has done its first resync.

        Raises ``DatabaseUnavailable`` if that does not happen within ``timeout_s``
        (the subscription stays: it is served as soon as the database is reachable).
        """
        if not channel.isidentifier():
            raise ValueError(f"not a channel name: {channel!r}")
        subscription = _Subscription(channel, subscriber)
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("notifications are closed")
            # ``live`` stays as it is: the caches of the subscribers already listening
            # are no less current for a new one (a gallery generation opened by a model
            # swap subscribes while requests are authenticated from the key cache).
            self._subscriptions.append(subscription)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="facerec-db-listener", daemon=True
                )
                self._thread.start()
        if not subscription.ready.wait(timeout_s):
            raise DatabaseUnavailable(CLIENT_MESSAGE, retry_after_s=RETRY_AFTER_S)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop delivering to ``subscriber`` (its channel stays LISTENed: harmless)."""
        with self._lock:
            self._subscriptions = [s for s in self._subscriptions if s.subscriber is not subscriber]

    def close(self) -> None:
        """Stop listening; safe to call twice."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._live = False

    # --- the listener thread ---------------------------------------------------------

    def _run(self) -> None:
        delay = RETRY_INITIAL_S
        self._failing = False
        while not self._stop.is_set():
            try:
                with self._connect() as connection:
                    delay = RETRY_INITIAL_S
                    self._serve(connection)
                return  # closed
            except Exception as exc:
                self._live = False
                self._forget_listening()
                if not self._failing:
                    text = str(exc).strip()
                    logger.warning(
                        "database notifications interrupted (%s: %s); reconnecting",
                        type(exc).__name__,
                        text.splitlines()[0] if text else "",
                    )
                self._failing = True
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, RETRY_MAX_S)

    def _serve(self, connection: psycopg.Connection[Any]) -> None:
        while not self._stop.is_set():
            self._listen_to_new(connection)
            if self._failing and self._live:
                logger.warning("database notifications are live again")
                self._failing = False
            for notify in connection.notifies(timeout=POLL_S):
                self._dispatch(notify.channel, notify.payload)
                if self._stop.is_set():
                    return

    def _listen_to_new(self, connection: psycopg.Connection[Any]) -> None:
        """LISTEN for subscriptions not yet listening, then let them re-read."""
        with self._lock:
            pending = [s for s in self._subscriptions if not s.listening]
        if not pending:
            return
        for subscription in pending:
            connection.execute(f"LISTEN {subscription.channel}")
        for subscription in pending:
            subscription.subscriber.resync()
            subscription.listening = True
            subscription.ready.set()
        with self._lock:
            self._live = all(s.listening for s in self._subscriptions)

    def _dispatch(self, channel: str, payload: str) -> None:
        with self._lock:
            targets = [s for s in self._subscriptions if s.listening and s.channel == channel]
        for subscription in targets:
            subscription.subscriber.notified(payload)

    def _forget_listening(self) -> None:
        with self._lock:
            for subscription in self._subscriptions:
                subscription.listening = False
