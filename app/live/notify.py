"""The publishing side of live updates; no Starlette or Strawberry here.

An event is a short text, "<kind>:<id>": "c:<tenant>" a charge (usage and balance moved),
"b:<tenant>" the balance or what is available moved (grant, reversal, hold), "k:<key>" a key was
revoked. It says only *what* to look at again: subscribers read the state themselves, so a
burst of charges folds into one read and an event can never carry a stale number.

PostgreSQL: pg_notify inside the writing transaction. The server delivers it at COMMIT and drops
it on ROLLBACK, and to every process LISTENing on the database (identical notifications of one
transaction are folded into one). SQLite has no such channel: the event is kept on the connection
and handed to this process's hubs after the commit (app.core.db.after_commit), never on rollback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection

from app.core.db import after_commit, after_commit_hooks

CHANNEL = "meterkit_live"
CHARGE, BALANCE, KEY = "c", "b", "k"


def charged(tenant_id: str) -> str:
    return f"{CHARGE}:{tenant_id}"


def balance_moved(tenant_id: str) -> str:
    return f"{BALANCE}:{tenant_id}"


def key_revoked(key_id: str) -> str:
    return f"{KEY}:{key_id}"


# SQL for a statement that already runs in the transaction: the metered charge folds its event
# into the INSERT of its usage event (RETURNING ..., pg_notify(...)), so it costs no round trip.
PG_NOTIFY_EXPR = f"pg_notify('{CHANNEL}', :live)"


def notify(conn: Connection, event: str) -> None:
    """Publish `event` when (and only if) the transaction of `conn` commits."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_notify(%(c)s, %(e)s)", {"c": CHANNEL, "e": event})
    else:
        local_after_commit(conn, event)


def local_after_commit(conn: Connection, event: str) -> None:
    """SQLite: keep the event with the transaction; its commit hands it to this process's hubs,
    a rollback drops it. One hook per transaction, however many events (a batch charges many times)."""
    for hook in after_commit_hooks(conn):
        if isinstance(hook, _Flush):
            hook.events.add(event)
            return
    after_commit(conn, _Flush(database_key(conn.engine), {event}))


class _Flush:
    __slots__ = ("database", "events")

    def __init__(self, database: str, events: set[str]) -> None:
        self.database, self.events = database, events

    def __call__(self) -> None:
        publish_local(self.database, self.events)


# The hubs of this process by database (several apps may share a process: tests, workers).
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


def publish_local(database: str, events: Any) -> None:
    sinks = _SINKS.get(database)
    if not sinks:
        return
    for sink in list(sinks):
        for event in events:
            sink(event)


def database_key(engine: Any) -> str:
    """Which database an engine writes to, as the in-process bus names it (the SQLite file)."""
    return str(engine.url.database or "")
