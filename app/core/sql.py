"""Hand-written SQL for the hot path.

SQLAlchemy builds, caches and compiles an expression on every execute; on the metered call
that cost ~150 us per statement, more than SQLite's own work (~15 us). The few statements of
the charge transaction are written once, in the SQL both engines speak (ON CONFLICT,
RETURNING), and sent straight to the driver. Values cross as the ORM would store them: times as
naive-UTC text on SQLite and timestamptz on PostgreSQL, JSON as text.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection

_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


class Sql:
    """A statement with :named parameters, rendered once per driver's parameter style. SQLite gets it
    with positional `?` and the names in their order: the driver binds a tuple for a fraction of what
    it costs to look each name up in a dict (~1.6K instructions a parameter, measured with callgrind)."""

    def __init__(self, text: str, *, pg_suffix: str = "", pg: str | None = None) -> None:
        self.text = " ".join(text.split())
        self.pg_text = " ".join(pg.split()) if pg else self.text  # where the two dialects differ
        self.pg_suffix = pg_suffix  # e.g. FOR UPDATE OF a: PostgreSQL row locks (SQLite has BEGIN IMMEDIATE)
        self._pg: str | None = None
        names = _PARAM.findall(self.text)
        self.sqlite_text = _PARAM.sub("?", self.text)
        # The values in the order of their `?`s (a name used twice is bound twice).
        self.sqlite_values: Callable[[dict[str, Any]], tuple[Any, ...]] = (
            _no_values if not names else _one_value(names[0]) if len(names) == 1 else operator.itemgetter(*names)
        )

    def render(self, dialect: str) -> str:
        if dialect == "sqlite":
            return self.text
        if self._pg is None:
            body = self.pg_text.replace("%", "%%") + (" " + self.pg_suffix if self.pg_suffix else "")
            self._pg = _PARAM.sub(r"%(\1)s", body)
        return self._pg


def _no_values(params: dict[str, Any]) -> tuple[Any, ...]:
    return ()


def _one_value(name: str) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    return lambda params: (params[name],)


class Result:
    """Rows as plain tuples, straight from the driver's cursor."""

    __slots__ = ("_cur",)

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    def first(self) -> tuple[Any, ...] | None:
        row = self._cur.fetchone()
        return tuple(row) if row is not None else None

    def one(self) -> tuple[Any, ...]:
        row = self.first()
        if row is None:
            raise LookupError("expected one row")
        return row

    def scalar_one(self) -> Any:
        return self.one()[0]

    def all(self) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._cur.fetchall()]


# A Connection whose driver connection never changes (SQLite's held writer, app/core/db.py) carries it
# under this name: four property lookups through SQLAlchemy's pool fewer per statement.
DRIVER = "_meterkit_driver"


def _driver(conn: Connection) -> Any:
    driver = conn.__dict__.get(DRIVER)
    return driver if driver is not None else conn.connection.driver_connection


def run(conn: Connection, stmt: Sql, params: dict[str, Any]) -> Result:
    """Execute on the DBAPI connection of the current transaction. Even exec_driver_sql costs
    ~120 us of result bookkeeping per statement; the driver itself takes ~20 us."""
    driver = conn.__dict__.get(DRIVER)
    cur = (driver if driver is not None else conn.connection.driver_connection).cursor()  # type: ignore[union-attr]
    dialect = conn.dialect.name
    values: tuple[Any, ...] | dict[str, Any]
    if dialect == "sqlite":
        text, values = stmt.sqlite_text, stmt.sqlite_values(params)
    else:
        text, values = stmt.render(dialect), params
    if OBSERVER is None:
        cur.execute(text, values)
    else:
        with OBSERVER(text, dialect):
            cur.execute(text, values)
    return Result(cur)


def run_many(conn: Connection, stmt: Sql, rows: list[dict[str, Any]]) -> None:
    """One statement, many parameter sets (the driver's executemany), as `run`: one span when traced."""
    cur = _driver(conn).cursor()
    dialect = conn.dialect.name
    values: list[tuple[Any, ...]] | list[dict[str, Any]]
    if dialect == "sqlite":
        text, values = stmt.sqlite_text, [stmt.sqlite_values(row) for row in rows]
    else:
        text, values = stmt.render(dialect), rows
    if OBSERVER is None:
        cur.executemany(text, values)
    else:
        with OBSERVER(text, dialect):
            cur.executemany(text, values)


# Statements sent straight to the driver skip SQLAlchemy's events, so tracing
# (app/observability/tracing.py) sets this: a context manager around each, given the SQL text
# (placeholders, never values) and the dialect. None (the default): one global read per statement.
OBSERVER: Callable[[str, str], AbstractContextManager[Any]] | None = None


def observe(text: str, dialect: str) -> AbstractContextManager[Any]:
    """For the other driver-level statements (PostgreSQL's one-round-trip charge)."""
    return nullcontext() if OBSERVER is None else OBSERVER(text, dialect)


def is_sqlite(conn: Connection) -> bool:
    return conn.dialect.name == "sqlite"


def ts(conn: Connection, value: datetime | None) -> Any:
    """A time as the UTCDateTime column stores it."""
    if value is None:
        return None
    if conn.dialect.name != "sqlite":
        return value.astimezone(UTC)
    # A charge writes the same few times (now, its period, its hour) several times over.
    text = _TS_TEXT.get(value)
    if text is None:
        if len(_TS_TEXT) >= _MEMO_SIZE:
            _TS_TEXT.clear()
        text = _TS_TEXT[value] = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    return text


def read_ts(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        # SQLite's text: the same period bounds and subscription dates are read by every charge.
        parsed = _TS_VALUE.get(value)
        if parsed is None:
            if len(_TS_VALUE) >= _MEMO_SIZE:
                _TS_VALUE.clear()
            parsed = datetime.fromisoformat(value)
            parsed = _TS_VALUE[value] = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        return parsed
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Memos of pure conversions (datetimes are immutable), bounded by clearing.
_MEMO_SIZE = 4096
_TS_TEXT: dict[datetime, str] = {}
_TS_VALUE: dict[str, datetime] = {}


def read_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # json.dumps builds an encoder per call for these


def to_json(value: Any) -> str:
    return _COMPACT.encode(value)
