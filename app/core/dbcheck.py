"""Before a command touches the database: can we reach it (migrate, serve), does it exist already
(the maintenance commands, which must not create it)? If not, one line with
the cause and the fix, instead of a driver traceback several hundred lines long."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from app.core.db import normalize_url

CONNECT_TIMEOUT_SECONDS = 10


class DatabaseUnavailable(Exception):
    """`message` is the one line to print: what is wrong, then what to do about it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _where(u: URL) -> str:
    return f"{u.host or 'localhost'}:{u.port or 5432}"


def _createdb(u: URL) -> str:
    parts = ["createdb"]
    if u.host:
        parts += ["-h", u.host]
    if u.port:
        parts += ["-p", str(u.port)]
    if u.username:
        parts += ["-U", u.username]
    return shlex.join([*parts, u.database or "meterkit"])


def explain(exc: BaseException, url: str) -> str | None:
    """The cause and the fix for a failed connection, or None when it is not a connection problem."""
    u = make_url(normalize_url(url))
    if u.get_backend_name() == "sqlite":
        if isinstance(exc, DBAPIError) and "unable to open database file" in str(exc.orig):
            folder = Path(u.database or ".").resolve().parent
            return (
                f"cannot open the SQLite file {u.database}: {folder} does not exist or is not writable; "
                f"create it (mkdir -p {shlex.quote(str(folder))}) or set METERKIT_DATABASE_URL"
            )
        return None
    if not isinstance(exc, DBAPIError):
        return None
    detail = " ".join(str(exc.orig).split())
    where = _where(u)
    if m := re.search(r'database "([^"]+)" does not exist', detail):
        return f'database "{m.group(1)}" does not exist on {where}; create it with `{_createdb(u)}`, then run again'
    if m := re.search(r'role "([^"]+)" does not exist', detail):
        return (
            f'PostgreSQL on {where} has no user "{m.group(1)}"; create it (createuser {shlex.quote(m.group(1))}) '
            "or put an existing user in METERKIT_DATABASE_URL"
        )
    if "password authentication failed" in detail or "no password supplied" in detail:
        return (
            f"PostgreSQL on {where} refused the login of {u.username!r}; "
            "check the user and password in METERKIT_DATABASE_URL"
        )
    if "Connection refused" in detail or "could not connect" in detail or "timeout expired" in detail:
        return (
            f"cannot reach PostgreSQL at {where} (connection refused or timed out); start the server "
            "(e.g. `pg_ctlcluster <version> main start` or `docker run -p 5432:5432 postgres`) "
            "or point METERKIT_DATABASE_URL at a running one"
        )
    if "could not translate host name" in detail or "Name or service not known" in detail:
        return f"cannot resolve the host {u.host!r} in METERKIT_DATABASE_URL; check its spelling"
    return f"cannot connect to PostgreSQL at {where}: {detail}; check METERKIT_DATABASE_URL"


def probe(url: str) -> None:
    """Connect once (10 s timeout) and run SELECT 1; raise DatabaseUnavailable with the one line."""
    try:
        u = make_url(normalize_url(url))
        args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if u.get_backend_name() == "postgresql" else {}
        engine = create_engine(u, poolclass=NullPool, connect_args=args)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise DatabaseUnavailable(
            f"METERKIT_DATABASE_URL is not a usable database URL ({exc}); "
            "use e.g. sqlite:///./meterkit.db or postgresql://user@host:5432/meterkit"
        ) from None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        raise DatabaseUnavailable(explain(exc, url) or " ".join(str(exc.orig).split())) from None
    finally:
        engine.dispose()


class DatabaseMissing(DatabaseUnavailable):
    """There is no meterkit database at that URL yet: a command that only reads or repairs one
    must not create it (an empty SQLite file, then `no such table`); `meterkit migrate` does."""


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL, None for an in-memory database or another engine."""
    u = make_url(normalize_url(url))
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    name = u.database
    if u.query.get("uri") in ("true", "1") and name.startswith("file:"):
        name = name[len("file:") :].split("?", 1)[0]
        if name in ("", ":memory:") or u.query.get("mode") == "memory":
            return None
    return Path(name).resolve()


HOW = "with `meterkit migrate` (or `meterkit serve`, which migrates first)"


def require_existing(url: str) -> None:
    """For the commands that work on an existing database (reconcile, stripe reconcile, webhooks
    work): DatabaseMissing when a SQLite file does not exist (checked before anything opens it, so
    nothing is created) or when the database has no meterkit tables; DatabaseUnavailable when it
    cannot be reached. Opening a SQLite file that does not exist would create it."""
    try:
        path = sqlite_file(url)
    except (ArgumentError, NoSuchModuleError, ValueError):
        path = None  # probe() words the bad URL
    if path is not None and not path.is_file():
        raise DatabaseMissing(
            f"the SQLite database {path} does not exist; create it {HOW}, "
            "or set METERKIT_DATABASE_URL to the right file"
        )
    probe(url)
    engine = create_engine(make_url(normalize_url(url)), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            migrated = inspect(conn).has_table("alembic_version")
    except DBAPIError as exc:
        raise DatabaseUnavailable(explain(exc, url) or " ".join(str(exc.orig).split())) from None
    finally:
        engine.dispose()
    if not migrated:
        where = str(path) if path is not None else make_url(normalize_url(url)).render_as_string(hide_password=True)
        raise DatabaseMissing(f"the database {where} has no meterkit tables (never migrated); create them {HOW}")
