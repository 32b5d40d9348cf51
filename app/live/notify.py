"""The publishing side of live updates; no Starlette or Strawberry here.

An event is a short text, "<kind>:<id>": "c:<tenant>" a charge (usage and balance moved),
"b:<tenant>" the balance or what is available moved (grant, reversal, hold), "k:<key>" a key was
revoked. It says only *what* to look at again: subscribers read the state themselves, so a
burst of charges folds into one read and an event never carries a stale number.

An event is kept with the transaction that makes it and handed on only when that transaction
commits (app.core.db.after_commit): a refused or rolled-back charge publishes nothing. Then
SQLite hands it to this process's hubs (SQLite has no channel between processes), and PostgreSQL
sends it to every gateway process with NOTIFY, batched: one notifying transaction per ~50 ms per
process (PgBatcher), never one per charge. PostgreSQL serializes the commits of notifying
transactions (a database-wide lock held through commit): measured with 8 concurrent writers on
this machine, a pg_notify inside each transaction cut commits from ~1,550/s to ~380/s, so the
metered transaction itself never notifies.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

from sqlalchemy.engine import Connection, Engine

from app.core.db import commit_hooks

log = logging.getLogger("meterkit.live")

CHANNEL = "meterkit_live"
CHARGE, BALANCE, KEY = "c", "b", "k"
SEPARATOR = ","  # several events in one NOTIFY payload
_PAYLOAD_LIMIT = 7000  # PostgreSQL refuses payloads of 8000 bytes or more


def charged(tenant_id: str) -> str:
    return f"{CHARGE}:{tenant_id}"


def balance_moved(tenant_id: str) -> str:
    return f"{BALANCE}:{tenant_id}"


def key_revoked(key_id: str) -> str:
    return f"{KEY}:{key_id}"


def publish(conn: Connection, event: str) -> None:
    """Publish `event` when (and only if) the transaction of `conn` commits. One hook per
    transaction however many events (a batch charges many times); costs no statement."""
    if not _SINKS and conn.dialect.name == "sqlite":
        return  # SQLite events stay in this process, and nothing in it listens
    hooks = commit_hooks(conn)
    for hook in hooks:
        if isinstance(hook, _Flush):
            hook.events.add(event)
            return
    hooks.append(_Flush(conn.engine, {event}))


class _Flush:
    __slots__ = ("engine", "events")

    def __init__(self, engine: Engine, events: set[str]) -> None:
        self.engine, self.events = engine, events

    def __call__(self) -> None:
        if self.engine.dialect.name == "postgresql":
            PgBatcher.of(self.engine).add(self.events)
        else:
            publish_local(database_key(self.engine), self.events)


def database_key(engine: Any) -> str:
    """Which database an engine writes to, as the in-process bus names it (the SQLite file)."""
    return str(engine.url.database or "")


# ---- SQLite: this process's hubs, by database ---------------------------------------------------

Sink = Callable[[str], Any]
_SINKS: dict[str, set[Sink]] = {}
_LOCK = threading.Lock()


def subscribe_local(database: str, sink: Sink) -> None:
    with _LOCK:
        _SINKS.setdefault(database, set()).add(sink)


def unsubscribe_local(database: str, sink: Sink) -> None:
    with _LOCK:
        sinks = _SINKS.get(database)
        if sinks is not None:
            sinks.discard(sink)
            if not sinks:
                del _SINKS[database]


def publish_local(database: str, events: Iterable[str]) -> None:
    sinks = _SINKS.get(database)
    if not sinks:
        return
    for sink in list(sinks):
        for event in events:
            sink(event)


# ---- PostgreSQL: committed events, NOTIFYed in batches -----------------------------------------


class PgBatcher:
    """This process's committed events for one database, sent by a short-lived thread: it waits
    DELAY for a burst to gather, sends everything pending in one transaction, and leaves after
    IDLE seconds with nothing to send."""

    DELAY = 0.05
    IDLE = 10.0
    _all: weakref.WeakKeyDictionary[Engine, PgBatcher] = weakref.WeakKeyDictionary()
    _all_lock = threading.Lock()

    @classmethod
    def of(cls, engine: Engine) -> PgBatcher:
        batcher = cls._all.get(engine)
        if batcher is None:
            with cls._all_lock:
                batcher = cls._all.get(engine)
                if batcher is None:
                    batcher = cls._all[engine] = cls(engine)
        return batcher

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._send_lock = threading.RLock()  # one sender at a time on the connection
        self._conn: Any = None

    def add(self, events: Iterable[str]) -> None:
        with self._lock:
            self._pending.update(events)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="meterkit-live-notify", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        try:
            while True:
                if not self._wake.wait(timeout=self.IDLE):
                    with self._lock:
                        if not self._pending:
                            self._thread = None
                            return
                self._wake.clear()
                threading.Event().wait(self.DELAY)  # let a burst of commits gather
                self.flush()
        finally:
            self._disconnect()

    def flush(self) -> None:
        with self._send_lock:
            with self._lock:
                batch, self._pending = self._pending, set()
            if not batch:
                return
            try:
                conn = self._connection()
                with conn.transaction():
                    for payload in _payloads(sorted(batch)):
                        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            except Exception:
                self._disconnect()
                # Lost: subscribers look again on their own every RESYNC seconds (app/graphql/live.py).
                log.warning("live updates: could not send %d event(s)", len(batch), exc_info=True)

    def _connection(self) -> Any:
        # Its own connection, outside the app's pool: a NOTIFY never waits for, or takes, a
        # connection a request needs.
        if self._conn is None or self._conn.closed:
            import psycopg

            dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            # prepare_threshold=None: never prepared server-side, so it works through PgBouncer's
            # transaction pooling too (a NOTIFY is transactional; only LISTEN needs a session).
            self._conn = psycopg.connect(
                dsn, autocommit=True, application_name="meterkit-live-notify", prepare_threshold=None
            )
        return self._conn

    def _disconnect(self) -> None:
        with self._send_lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with suppress(Exception):
                    conn.close()


def _payloads(events: list[str]) -> Iterable[str]:
    chunk: list[str] = []
    size = 0
    for event in events:
        if chunk and size + len(event) + 1 > _PAYLOAD_LIMIT:
            yield SEPARATOR.join(chunk)
            chunk, size = [], 0
        chunk.append(event)
        size += len(event) + 1
    if chunk:
        yield SEPARATOR.join(chunk)


@atexit.register
def _flush_all() -> None:
    # A CLI command or a stopping server sends what it committed before it goes.
    for batcher in list(PgBatcher._all.values()):
        batcher.flush()
