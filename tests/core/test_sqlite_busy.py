"""SQLite's write lock held by another process past busy_timeout (a CLI command, a second server on
the same file): the unit of work answers Unavailable, so REST says 503 + Retry-After and GraphQL a
typed retryable error, never 500, and nothing is written; once the lock is free the same request
goes through, once (issue 17: "database is locked" was a 500)."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from app.core.clock import FrozenClock
from app.core.db import connection_of_work, make_engine, unit_of_work
from app.core.errors import Unavailable
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.conftest import Api, Database, count_rows
from tests.fixtures_catalog import SET_SUB, seed_catalog

BUSY_MS = 50  # instead of 30 s: the lock below is never given up while a unit waits
WRITTEN = ("ledger_entry", "usage_event", "usage_counter", "credit_hold")
CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename ... on Charged { eventId replayed } } }"""


def impatient_engine(url: str) -> Engine:
    engine = make_engine(url)

    @event.listens_for(engine, "connect")
    def _short_wait(dbapi_conn: Any, _record: Any) -> None:  # after make_engine's own PRAGMAs
        dbapi_conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")

    return engine


@pytest.fixture
def sqlite_file(tmp_path: Path, sqlite_template: Path) -> Path:
    path = tmp_path / "busy.db"
    shutil.copy(sqlite_template, path)
    return path


def other_writer(path: Path) -> sqlite3.Connection:
    """Another process's connection holding the write lock (BEGIN IMMEDIATE, never committed)."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_a_write_unit_meeting_a_held_lock_is_unavailable(sqlite_file: Path) -> None:
    engine = impatient_engine(f"sqlite:///{sqlite_file}")
    holder = other_writer(sqlite_file)
    try:
        with pytest.raises(Unavailable, match="busy with another writer"), unit_of_work(engine) as s:
            s.connection().execute(text("SELECT 1"))
        with pytest.raises(Unavailable), connection_of_work(engine) as conn:
            conn.execute(text("SELECT 1"))
        # Reads go on: WAL readers never wait for the writer.
        with unit_of_work(engine, write=False) as s:
            assert s.connection().execute(text("SELECT 1")).scalar() == 1
    finally:
        holder.rollback()
        holder.close()
    with unit_of_work(engine) as s:
        assert s.connection().execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


@pytest.fixture
def busy_api(sqlite_file: Path, clock: FrozenClock) -> Iterator[Api]:
    url = f"sqlite:///{sqlite_file}"
    engine = impatient_engine(url)
    settings = Settings(env="test", database_url=url, auth_cache_seconds=600)
    with TestClient(create_app(settings, engine=engine, clock=clock)) as client:
        api = Api(client, Database("sqlite", url, engine))
        with unit_of_work(engine) as s:
            _, api.operator_key = create_api_key(s, clock, role="operator", scope=None, name="tests")
        yield api
    engine.dispose()


def test_rest_and_graphql_answer_503_while_another_process_holds_the_lock(busy_api: Api, sqlite_file: Path) -> None:
    api = busy_api
    seed_catalog(api)
    tid = api.create_tenant("Locked out")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    auth = {"Authorization": f"Bearer {api.tenant_key(tid)}"}
    assert api.client.get("/v1/status", headers=auth).status_code == 200  # the key is cached now
    charge = {"primitive": "email.send", "idempotency_key": "busy-1"}
    gql = {"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": "busy-2"}}}
    before = count_rows(api.db.engine, *WRITTEN)
    holder = other_writer(sqlite_file)
    try:
        r = api.client.post("/v1/charge", json=charge, headers=auth)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["code"] == "database_unavailable"
        r = api.client.post("/graphql", json=gql, headers=auth)
        assert r.status_code == 503, r.text
        (error,) = r.json()["errors"]
        assert error["extensions"]["code"] == "DATABASE_UNAVAILABLE" and error["extensions"]["retryable"] is True
    finally:
        holder.rollback()
        holder.close()
    assert count_rows(api.db.engine, *WRITTEN) == before
    r = api.client.post("/v1/charge", json=charge, headers=auth)
    assert r.status_code == 200 and r.json()["replayed"] is False, r.text
    data = api.client.post("/graphql", json=gql, headers=auth).json()["data"]["charge"]
    assert data["__typename"] == "Charged" and data["replayed"] is False
