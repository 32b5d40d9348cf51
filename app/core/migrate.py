from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from app.core.db import normalize_url

# pg_advisory_lock key for "migrating or bootstrapping" (any constant shared by all processes).
_PG_LOCK_KEY = 0x6D6B5F6D6967  # "mk_mig"

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head", *, lock: bool = True) -> None:
    if not lock:
        command.upgrade(alembic_config(url), revision)
        return
    with startup_lock(url):
        command.upgrade(alembic_config(url), revision)


@contextmanager
def startup_lock(url: str) -> Iterator[None]:
    """Serialize migrations and first-start bootstrap across processes: several gateways started at
    once on a fresh database would otherwise race to create the same tables and rows. Not
    re-entrant: code holding it calls upgrade(..., lock=False)."""
    u = make_url(normalize_url(url))
    if u.get_backend_name() == "sqlite":
        path = u.database
        if not path or path == ":memory:":
            yield
            return
        # A sidecar file: SQLite's own locks cannot be held across alembic's connections.
        with open(f"{path}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    engine = create_engine(u, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
    finally:
        engine.dispose()
