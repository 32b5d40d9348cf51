"""Every statement a test's database is sent, captured at the driver."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import event

from app.core.db import held_driver
from tests.conftest import Database


@contextmanager
def captured_statements(db: Database) -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent to the driver, with its parameters. The hot path's hand-written SQL goes
    straight to the driver cursor (app/core/sql.py), past SQLAlchemy's events, so this listens at the
    driver: SQLite's trace callback (the statement with its values expanded) and, on PostgreSQL, a
    psycopg cursor class that records what it executes."""
    seen: list[tuple[str, Any]] = []
    sqlite = db.backend == "sqlite"

    class Recording(psycopg.Cursor):  # type: ignore[type-arg]
        def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
            seen.append((str(query), params))
            return super().execute(query, params, **kw)

        def executemany(self, query: Any, params_seq: Any, **kw: Any) -> Any:
            params_seq = list(params_seq)
            seen.append((str(query), params_seq))
            return super().executemany(query, params_seq, **kw)

    def checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if sqlite:
            dbapi_conn.set_trace_callback(lambda statement: seen.append((statement, None)))
        else:
            dbapi_conn.cursor_factory = Recording

    def checkin(dbapi_conn: Any, record: Any) -> None:
        if sqlite:
            dbapi_conn.set_trace_callback(None)
        else:
            dbapi_conn.cursor_factory = psycopg.Cursor

    event.listen(db.engine, "checkout", checkout)
    event.listen(db.engine, "checkin", checkin)
    held = held_driver(db.engine)  # SQLite's writers' connection, checked out once (app/core/db.py)
    if held is not None:
        checkout(held, None, None)
    try:
        yield seen
    finally:
        event.remove(db.engine, "checkout", checkout)
        event.remove(db.engine, "checkin", checkin)
        held = held_driver(db.engine)
        if held is not None:
            checkin(held, None)
