"""Engine and unit of work.

Services never commit: the unit of work opened at the edge commits or rolls back.
SQLite runs in WAL with synchronous=NORMAL, checkpointing every 10,000 pages; a
writing unit of work starts with BEGIN IMMEDIATE so two writers serialize at BEGIN
instead of failing at COMMIT with a lock upgrade error. PostgreSQL writes at READ COMMITTED and rely on row locks
and conditional UPDATEs; its reads see one snapshot (REPEATABLE READ).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session, create_engine

from app.core.errors import Unavailable
from app.core.sql import DRIVER

log = logging.getLogger("meterkit.db")


def normalize_url(url: str) -> str:
    # Accept the usual postgres:// spellings and use psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, *, pgbouncer: bool = False, **kw: Any) -> Engine:
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        # A pool as large as the server's thread pool: under load, connections are reused, not reopened.
        kw.setdefault("pool_size", 40)
        kw.setdefault("max_overflow", 20)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kw)
        _setup_sqlite(engine)
        return engine
    kw.setdefault("pool_size", 20)
    kw.setdefault("max_overflow", 20)
    kw.setdefault("pool_pre_ping", False)
    if pgbouncer:
        # Transaction pooling hands each transaction whichever server connection is free, so a
        # statement psycopg prepared (its 5th run of the same SQL, by default) is missing on the
        # next one, or clashes with another client's of the same name: never prepare server-side.
        kw["connect_args"] = {**kw.get("connect_args", {}), "prepare_threshold": None}
    return create_engine(url, **kw)


def engine_for(settings: Any, url: str | None = None) -> Engine:
    """The engine the settings describe: METERKIT_DATABASE_URL (or `url`), the pool's size,
    overflow and timeout (METERKIT_DB_POOL_SIZE, _MAX_OVERFLOW, _POOL_TIMEOUT_SECONDS) and
    METERKIT_DB_PGBOUNCER. Every process that serves or changes data builds its engine here."""
    kw: dict[str, Any] = {"pool_timeout": settings.db_pool_timeout_seconds}
    if settings.db_pool_size is not None:
        kw["pool_size"] = settings.db_pool_size
    if settings.db_max_overflow is not None:
        kw["max_overflow"] = settings.db_max_overflow
    return make_engine(url or settings.database_url, pgbouncer=settings.db_pgbouncer, **kw)


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A pooled connection, or Unavailable when none can be had in time: none free within the
    pool timeout, the server refused a new one (too many clients, a role's CONNECTION LIMIT,
    connection refused, starting up), or it dropped mid-transaction. This is the one place the
    units of work learn that, so every edge maps one exception to 503 (app/http/edge.py)."""
    conn = _checkout(engine)
    with conn, _unavailable_on_loss():
        yield conn


def _checkout(engine: Engine) -> Connection:
    try:
        return engine.connect()
    except PoolTimeout as exc:
        raise Unavailable("no database connection was free in time; retry shortly") from exc
    except OperationalError as exc:
        log.warning("database refused a connection: %s", exc.orig)
        raise Unavailable("the database refused a new connection; retry shortly") from exc


@contextmanager
def _unavailable_on_loss() -> Iterator[None]:
    try:
        yield
    except (DBAPIError, sqlite3.OperationalError) as exc:
        # The BEGIN IMMEDIATE of a writing unit runs in a "begin" event (_on_begin), whose
        # errors reach us as the driver raised them, not wrapped in DBAPIError.
        if sqlite_busy(exc):
            # Another process (a CLI command, a second server) held SQLite's write lock past
            # busy_timeout: nothing was written and nothing is wrong with the request.
            log.warning("database stayed locked past busy_timeout: %s", exc)
            raise Unavailable("the database is busy with another writer; retry shortly") from exc
        if not isinstance(exc, DBAPIError) or not exc.connection_invalidated:
            raise
        log.warning("database connection lost mid-transaction: %s", exc.orig)
        raise Unavailable(
            "the database connection was lost; retry (a metered call with the same idempotency key)"
        ) from exc


_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6  # primary result codes (the low byte of an extended code)


def sqlite_busy(exc: BaseException) -> bool:
    """SQLite answered SQLITE_BUSY or SQLITE_LOCKED ("database is locked"): its write lock stayed
    taken for longer than busy_timeout. `exc` as the driver raised it, or wrapped in DBAPIError."""
    code = getattr(getattr(exc, "orig", exc), "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


WAL_AUTOCHECKPOINT_PAGES = 10_000  # bench/floor_app.py uses the same, as it does every SQLite setting


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so we can say BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        # Checkpoint every ~40 MB of WAL instead of every 4 MB: a charge dirties ~11 pages (ledger, event
        # and their indexes, counters, account, bucket), most of them the same hot pages each time, and a
        # checkpoint writes each distinct page once; fewer, larger checkpoints cut that work and its
        # fsyncs per charge (plain REST charge ~1.7x, measured side by side). Durability is unchanged.
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        driver = conn.connection.driver_connection
        if driver.in_transaction:
            return  # a writers' unit began it on the driver (connection_of_work): SQLAlchemy joins it
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        # Straight to the driver: exec_driver_sql's result bookkeeping cost more than SQLite's BEGIN.
        driver.execute(_BEGIN[mode])


_BEGIN = {mode: f"BEGIN {mode}" for mode in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")}


class SqliteCheckpointer:
    """Copies the WAL back into the database file on a thread of its own, so that work leaves the
    committing request. Left to SQLite, the commit that fills the WAL to wal_autocheckpoint pages
    checkpoints them all (and fsyncs) while holding the write lock, and every writer queued behind
    it waits: measured in-process, sequential GraphQL charges had a p99.9 of 21-25 ms and a max of
    35-141 ms that way, and 4-6 ms and 8-9 ms with this thread (bench/README "Benchmarks").

    A PASSIVE checkpoint never blocks a reader or a writer, so it runs beside the requests; it only
    stops at frames a reader still needs or that land while it copies. The autocheckpoint stays as
    the backstop (and for processes without this thread: the CLI): when it fires now, little is
    left to copy. Each tick costs one `PRAGMA data_version` when nothing was written."""

    def __init__(self, engine: Engine, interval: float) -> None:
        self.path = str(engine.url.database)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpoints = 0  # runs that copied something (tests, bench)
        self.lag_frames = 0  # WAL frames the last checkpoint could not copy yet (/metrics)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="meterkit-sqlite-checkpoint", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        import sqlite3

        try:
            # mode=rw: never create a file the app did not (a wrong path stays the app's error to report).
            conn = sqlite3.connect(
                f"file:{quote(self.path)}?mode=rw", uri=True, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error:
            log.warning("sqlite checkpointer: cannot open %s; SQLite's own checkpoints go on", self.path)
            return
        try:
            conn.execute("PRAGMA busy_timeout=0")  # another checkpoint running: skip this tick
            seen = None
            while not self._stop.wait(self.interval):
                try:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                    if version == seen:
                        continue  # nothing committed since the last look
                    seen = version
                    _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.lag_frames = max(0, frames - copied)
                    if copied > 0:
                        self.checkpoints += 1
                except sqlite3.Error:
                    log.warning("sqlite checkpointer: a checkpoint failed; trying again", exc_info=True)
        finally:
            conn.close()


def sqlite_checkpointer(engine: Engine, interval: float) -> SqliteCheckpointer | None:
    """A checkpointer for a SQLite file engine (None for PostgreSQL, in-memory, or interval 0)."""
    database = engine.url.database
    if not is_sqlite(engine) or interval <= 0 or not database or database == ":memory:":
        return None
    return SqliteCheckpointer(engine, interval)


# SQLite has one writer at a time. Left to itself, a waiting writer polls with sqlite's busy
# handler, which sleeps up to 100 ms between tries: under 40 concurrent writers that cut
# throughput twentyfold. Writers of one process queue on this lock instead (handing over in
# microseconds); writers in other processes still wait in busy_timeout.
_SQLITE_WRITERS: dict[str, threading.Lock] = {}
_REGISTRY_LOCK = threading.Lock()


def _writer_lock(engine: Engine) -> threading.Lock:
    key = str(engine.url.database)
    lock = _SQLITE_WRITERS.get(key)
    if lock is None:
        with _REGISTRY_LOCK:
            lock = _SQLITE_WRITERS.setdefault(key, threading.Lock())
    return lock


# A file SQLite engine's writers (connection_of_work) share one connection, kept checked out, and
# begin and commit on the driver itself: they run one at a time under _writer_lock anyway, and a
# checkout and checkin (the pool's bookkeeping, its reset-on-return ROLLBACK, a new Connection
# object) and SQLAlchemy's transaction bookkeeping and events cost more than the charge's own BEGIN
# and COMMIT. A statement through SQLAlchemy inside the unit (a Core UPDATE, an ORM session on the
# connection) autobegins SQLAlchemy's transaction, which joins the driver's (_on_begin), and the unit
# then ends through SQLAlchemy. Closed with the engine's dispose(); replaced after a lost connection.
_HELD = "meterkit_held_writer"


def _held_writer(engine: Engine) -> tuple[Connection, sqlite3.Connection] | None:
    """The engine's writers' connection and its driver connection; None for an in-memory database
    (one database per connection: each unit checks one out, as before)."""
    held: tuple[Connection, sqlite3.Connection] | None = engine.__dict__.get(_HELD)
    if held is None:
        database = engine.url.database
        if not database or database == ":memory:" or engine.url.query.get("mode") == "memory":
            return None
        if _pool_capacity(engine) < 2:
            # The held connection never goes back: a pool of one would leave the ORM's units,
            # the reads and the webhooks nothing (503 on every one). Each unit checks one out.
            return None
        conn = _checkout(engine).execution_options(sqlite_begin="IMMEDIATE")
        driver = conn.connection.driver_connection
        conn.__dict__[DRIVER] = driver  # for app.core.sql.run: this connection's driver never changes
        held = engine.__dict__[_HELD] = (conn, driver)  # type: ignore[assignment]
        if not event.contains(engine, "engine_disposed", _drop_writer):
            event.listen(engine, "engine_disposed", _drop_writer)
    return held


def _pool_capacity(engine: Engine) -> int:
    """How many connections the engine's pool may open at once (a pool without a bound: many)."""
    pool = engine.pool
    size, overflow = getattr(pool, "size", None), getattr(pool, "_max_overflow", None)
    if not callable(size) or not isinstance(overflow, int):
        return 1 << 30
    return int(size()) + max(overflow, 0) if overflow >= 0 else 1 << 30


def held_driver(engine: Engine) -> sqlite3.Connection | None:
    """The driver connection of the engine's held writer, if one is held (tests trace its statements)."""
    held = engine.__dict__.get(_HELD)
    return held[1] if held is not None else None


def _drop_writer(engine: Engine) -> None:
    held = engine.__dict__.pop(_HELD, None)
    if held is not None:
        held[0].close()


@contextmanager
def _held_unit(engine: Engine, conn: Connection, driver: sqlite3.Connection) -> Iterator[Connection]:
    """One writing transaction on the held connection (see _HELD)."""
    try:
        with _unavailable_on_loss():
            driver.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction():
                    conn.rollback()
                elif driver.in_transaction:
                    driver.rollback()
                raise
            try:
                if conn.in_transaction():
                    conn.commit()
                else:
                    driver.commit()
            except BaseException:
                if driver.in_transaction:
                    driver.rollback()  # a COMMIT that failed leaves the transaction open
                raise
    except BaseException:
        conn.info.pop(_AFTER_COMMIT, None)
        if conn.invalidated or conn.closed:
            _drop_writer(engine)
        raise
    _run_after_commit(conn)


@contextmanager
def unit_of_work(engine: Engine, *, write: bool = True) -> Iterator[Session]:
    """One transaction. Commits on normal exit, rolls back on any exception."""
    if write and is_sqlite(engine):
        with _writer_lock(engine), _transaction(engine, "IMMEDIATE") as session:
            yield session
    else:
        with _transaction(engine, None, snapshot=not write) as session:
            yield session


def _snapshot(conn: Connection) -> Connection:
    """A reading unit of work on PostgreSQL sees one snapshot. Under READ COMMITTED each statement
    takes its own, so a read of two statements (a balance, then its buckets) could straddle a
    commit and answer a state that never existed. psycopg says BEGIN ISOLATION LEVEL REPEATABLE
    READ itself: no extra round trip. SQLite's read transaction is one snapshot already."""
    if conn.dialect.name == "postgresql":
        return conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


@contextmanager
def _transaction(engine: Engine, sqlite_begin: str | None, *, snapshot: bool = False) -> Iterator[Session]:
    with connect(engine) as conn:
        if sqlite_begin:
            conn = conn.execution_options(sqlite_begin=sqlite_begin)
        if snapshot:
            conn = _snapshot(conn)
        with Session(bind=conn, expire_on_commit=False, autoflush=True) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                conn.info.pop(_AFTER_COMMIT, None)
                raise
        _run_after_commit(conn)


# Work to do once a transaction has committed, never if it rolls back (the in-process live
# events of SQLite: app/live). Kept in the DBAPI connection's info dict, so a unit of work's
# ORM session and its bare connection share one list.
_AFTER_COMMIT = "meterkit.after_commit"


def after_commit(conn: Connection, fn: Callable[[], None]) -> None:
    commit_hooks(conn).append(fn)


def commit_hooks(conn: Connection) -> list[Callable[[], None]]:
    """This transaction's after-commit work so far (to add to a hook instead of adding another)."""
    info = conn.info
    hooks: list[Callable[[], None]] | None = info.get(_AFTER_COMMIT)
    if hooks is None:
        hooks = info[_AFTER_COMMIT] = []
    return hooks


def _run_after_commit(conn: Connection) -> None:
    hooks = conn.info.pop(_AFTER_COMMIT, None)
    if hooks:
        for fn in hooks:
            fn()


def inline_sqlite(engine: Engine, settings: Any) -> bool:
    """Run SQLite units of work on the event loop itself, without a thread hop.

    SQLite admits one writer at a time, so a process's writes are serial anyway; handing each to
    a worker thread only added hops, GIL hand-offs and lock contention (measured: see README,
    Benchmarks). The price: while another *process* holds SQLite's write lock, this process's
    loop waits (up to busy_timeout). PostgreSQL always runs in worker threads."""
    return bool(getattr(settings, "sqlite_inline", False)) and is_sqlite(engine)


@contextmanager
def connection_of_work(engine: Engine, *, write: bool = True) -> Iterator[Connection]:
    """One transaction on a bare connection, for the metered hot path: the same BEGIN, lock and
    commit-or-rollback as unit_of_work, without the ORM session's bookkeeping (~0.2 ms a charge)."""
    if write and is_sqlite(engine):
        with _writer_lock(engine):
            held = _held_writer(engine)
            if held is not None:
                with _held_unit(engine, *held) as conn:
                    yield conn
                return
            with connect(engine) as conn:
                try:
                    with conn.execution_options(sqlite_begin="IMMEDIATE").begin():
                        yield conn
                except BaseException:
                    conn.info.pop(_AFTER_COMMIT, None)
                    raise
                _run_after_commit(conn)
        return
    with connect(engine) as conn:
        if not write:
            conn = _snapshot(conn)
        try:
            with conn.begin():
                yield conn
        except BaseException:
            conn.info.pop(_AFTER_COMMIT, None)
            raise
        _run_after_commit(conn)
