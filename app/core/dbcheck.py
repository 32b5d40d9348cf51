"""Before `meterkit migrate|serve` touch the database: can we reach it? If not, one line with
the cause and the fix, instead of a driver traceback several hundred lines long."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from sqlalchemy import create_engine, text
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
