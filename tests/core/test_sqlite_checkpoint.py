"""SQLite's WAL is copied back into the database file by the server's own checkpoint thread, not
by the commit that happens to fill it (app/core/db.py SqliteCheckpointer): seen from outside as
the WAL file being reused from its start once the thread has caught up, where without it the WAL
keeps growing until SQLite's autocheckpoint."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.core.clock import FrozenClock
from app.core.db import make_engine, unit_of_work
from app.core.money import MICRO
from app.main import create_app
from app.settings import Settings
from app.tenants.service import TenantInput, create_tenant


def _write(engine, clock: FrozenClock, n: int, tag: str) -> None:  # type: ignore[no-untyped-def]
    for i in range(n):  # one transaction each, as requests commit
        with unit_of_work(engine) as s:
            create_tenant(s, clock, TenantInput(name=f"{tag}{i}"), default_plan_key="free", signup_micro=MICRO)


@pytest.mark.parametrize("interval", [0.05, 0.0], ids=["thread", "sqlite-only"])
def test_the_checkpoint_thread_keeps_the_wal_from_growing(
    tmp_path: Path, sqlite_template: Path, clock: FrozenClock, interval: float
) -> None:
    path = tmp_path / "meterkit.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    wal = Path(f"{path}-wal")
    settings = Settings(
        env="test", database_url="sqlite://unused", auth_cache_seconds=0, sqlite_checkpoint_seconds=interval
    )
    app = create_app(settings, engine=engine, clock=clock)
    try:
        with TestClient(app):
            state = app.state.meterkit
            assert (state.checkpointer is not None) == (interval > 0)
            _write(engine, clock, 40, "a")
            assert wal.stat().st_size > 100 * 1024  # well below the autocheckpoint's 10,000 pages
            # One more commit at a time: appended to the WAL (the file grows), or, once everything
            # before it was copied back, written over the WAL's start (the file stays the size).
            reused, tries = False, 0
            deadline = time.monotonic() + 10
            while not reused and (time.monotonic() < deadline if interval > 0 else tries < 20):
                time.sleep(0.05)
                before = wal.stat().st_size
                _write(engine, clock, 1, f"b{tries}")
                reused, tries = wal.stat().st_size == before, tries + 1
        assert reused == (interval > 0), tries
        if interval > 0:
            assert state.checkpointer is None  # stopped with the server
        with unit_of_work(engine, write=False) as s:  # and nothing was lost on the way
            assert s.connection().exec_driver_sql("SELECT count(*) FROM tenant").scalar_one() >= 40 + tries
    finally:
        engine.dispose()
