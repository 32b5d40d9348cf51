"""The gateway behind PgBouncer in transaction pooling mode (issue 17, item 6), on Debian's
pgbouncer started by these tests (tests/pgbouncer.py) in front of the test PostgreSQL.

What transaction pooling breaks, each shown at the source and then handled:
- psycopg prepares a statement server-side on its 5th run; the next transaction may get another
  server connection (the statement is missing) or one where another client prepared the same
  name (it clashes). METERKIT_DB_PGBOUNCER=1 turns preparing off.
- LISTEN holds a session; through transaction pooling it hears nothing. Live updates LISTEN on
  METERKIT_DB_SESSION_URL (PostgreSQL itself, or a session-mode pool) instead.
- Session state (SET, advisory locks) would leak across clients: the gateway keeps none (its
  REPEATABLE READ reads say so in their BEGIN); the migration lock uses the session URL.
Then the money-concurrency scenarios run through it unchanged: no overspend, exactly-once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from starlette.testclient import TestClient

from app.core.clock import FrozenClock
from app.core.db import engine_for, make_engine, unit_of_work
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.conftest import PG_URL, REQUIRE_PG, Api, Database, count_rows
from tests.fixtures_catalog import SET_SUB, seed_catalog
from tests.live import BackgroundServer
from tests.metering import test_metering_concurrency as money
from tests.paths import ROOT
from tests.pgbouncer import pgbouncer, through
from tests.system import test_foundation_concurrency as foundation
from tests.ws_client import GraphQLWS

POSTGRES_ONLY = [pytest.param("postgres", marks=pytest.mark.postgres)] if PG_URL or REQUIRE_PG else []
pytestmark = pytest.mark.parametrize("db", POSTGRES_ONLY, indirect=True)


@pytest.fixture
def bouncer(db: Database) -> Iterator[int]:
    """A pgbouncer (transaction pooling, 8 server connections) in front of the test's database."""
    with pgbouncer(db.url, pool_mode="transaction", pool_size=8) as port:
        yield port


@pytest.fixture
def bounced(db: Database, bouncer: int) -> Iterator[Database]:
    """The test's database as the gateway sees it through pgbouncer: METERKIT_DB_PGBOUNCER=1."""
    url = through(db.url, bouncer)
    engine = engine_for(Settings(database_url=url, db_pgbouncer=True, db_pool_size=30, db_max_overflow=30))
    yield Database("postgres", url, engine)
    engine.dispose()


@pytest.fixture
def bounced_api(bounced: Database, settings: Settings, clock: FrozenClock) -> Iterator[Api]:
    """The tests' GraphQL caller, its app's every transaction through pgbouncer."""
    app = create_app(settings, engine=bounced.engine, clock=clock)
    with TestClient(app) as client:
        api = Api(client, bounced)
        with unit_of_work(bounced.engine) as s:
            _, api.operator_key = create_api_key(s, clock, role="operator", scope=None, name="tests")
        yield api


# ---------------------------------------------------------------- what transaction pooling breaks


def _same_statement_on_two_connections(engine: Any) -> None:
    a, b = engine.connect(), engine.connect()
    try:
        for i in range(8):  # past psycopg's prepare_threshold (5) on each
            for conn in (a, b):
                with conn.begin():
                    assert conn.execute(text("SELECT CAST(:x AS integer) + 1"), {"x": i}).scalar_one() == i + 1
    finally:
        a.close()
        b.close()


def test_server_side_prepared_statements_break_and_the_setting_turns_them_off(db: Database) -> None:
    with pgbouncer(db.url, pool_mode="transaction", pool_size=1) as port:
        url = through(db.url, port)
        plain = make_engine(url)
        try:
            with pytest.raises(DBAPIError, match="prepared statement"):
                _same_statement_on_two_connections(plain)  # as main did: both prepare "_pg3_0" on one server
        finally:
            plain.dispose()
        behind = engine_for(Settings(database_url=url, db_pgbouncer=True))
        try:
            _same_statement_on_two_connections(behind)
        finally:
            behind.dispose()


def test_listen_through_transaction_pooling_hears_nothing(db: Database, bouncer: int) -> None:
    """Why live updates need METERKIT_DB_SESSION_URL: the same LISTEN, direct and through pgbouncer."""
    direct = libpq(db.url)
    pooled = libpq(through(db.url, bouncer))
    with (
        psycopg.connect(direct, autocommit=True) as straight,
        psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as bounced_conn,
        psycopg.connect(direct, autocommit=True) as sender,
    ):
        straight.execute("LISTEN mk_probe")
        bounced_conn.execute("LISTEN mk_probe")
        sender.execute("NOTIFY mk_probe, 'hello'")
        heard = [n.payload for n in straight.notifies(timeout=2, stop_after=1)]
        assert heard == ["hello"]
        assert [n.payload for n in bounced_conn.notifies(timeout=1.5, stop_after=1)] == []


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# ---------------------------------------------------------------- the money, through pgbouncer


def test_thousand_charges_against_500_credits_through_pgbouncer(bounced_api: Api, bounced: Database) -> None:
    money.test_thousand_charges_against_500_credits(bounced_api, bounced)


def test_same_key_fifty_times_debits_once_through_pgbouncer(bounced_api: Api, bounced: Database) -> None:
    money.test_same_key_fifty_times_debits_once(bounced_api, bounced)


def test_reserves_settle_release_through_pgbouncer(bounced_api: Api, bounced: Database) -> None:
    money.test_two_hundred_reserves_settle_release(bounced_api, bounced)


def test_charges_against_a_quota_through_pgbouncer(bounced_api: Api, bounced: Database) -> None:
    money.test_two_hundred_charges_against_quota_of_100(bounced_api, bounced)


def test_concurrent_upserts_and_unique_races_through_pgbouncer(bounced_api: Api, clock: FrozenClock) -> None:
    foundation.test_concurrent_upserts_of_a_new_plan_both_succeed(bounced_api, clock)
    foundation.test_concurrent_tenants_with_one_external_id(bounced_api, clock)


def test_crash_mid_load_then_resend_through_pgbouncer(
    bounced_api: Api, bounced: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server processes (uvicorn, SIGKILLed mid-load) are configured by the environment."""
    monkeypatch.setenv("METERKIT_DB_PGBOUNCER", "1")
    money.test_crash_mid_load_then_resend(bounced_api, bounced)


# ---------------------------------------------------------------- live updates behind the pooler

BALANCE = "subscription { balanceChanged { available } }"
CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename ... on Charged { creditsRemaining } } }"""


def _live_tenant(api: Api) -> tuple[str, str]:
    seed_catalog(api)
    tenant = api.create_tenant("Bounced")
    api(SET_SUB, {"t": tenant, "i": {"planKey": "pro"}})
    return tenant, api.tenant_key(tenant)


def test_live_updates_listen_on_the_session_url(
    bounced_api: Api, bounced: Database, db: Database, clock: FrozenClock
) -> None:
    _, key = _live_tenant(bounced_api)
    settings = Settings(env="test", database_url=bounced.url, db_pgbouncer=True, db_session_url=db.url)
    app = create_app(settings, engine=bounced.engine, clock=clock)
    with BackgroundServer(app) as server, GraphQLWS(server.url, key) as ws:
        ws.ack()
        ws.subscribe("b", BALANCE)
        first = ws.next("b")["balanceChanged"]
        charged = bounced_api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "live"}}, key=key)
        # NOTIFY sent through pgbouncer, heard on the session URL: long before the 30 s re-read.
        after = ws.next("b", timeout=5.0)["balanceChanged"]
        assert after["available"] == charged["charge"]["creditsRemaining"] != first["available"]


def test_behind_the_pooler_without_a_session_url_subscriptions_still_start(
    bounced_api: Api, bounced: Database, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    """No LISTEN through the pooler (it would hear nothing): said once in the log, and a
    subscription still answers its current state (then re-reads periodically)."""
    _, key = _live_tenant(bounced_api)
    settings = Settings(env="test", database_url=bounced.url, db_pgbouncer=True)
    app = create_app(settings, engine=bounced.engine, clock=clock)
    with BackgroundServer(app) as server, GraphQLWS(server.url, key) as ws:
        ws.ack()
        ws.subscribe("b", BALANCE)
        assert ws.next("b")["balanceChanged"]["available"]
        assert app.state.meterkit.live._listener is None
    assert any("METERKIT_DB_SESSION_URL" in r.getMessage() for r in caplog.records)


def test_migrate_behind_the_pooler_uses_the_session_url(db: Database, bouncer: int) -> None:
    """`meterkit migrate` takes a session-level advisory lock: behind the pooler it connects to
    METERKIT_DB_SESSION_URL, never through transaction pooling (where the lock could leak)."""
    pooled = through(db.url, bouncer)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERKIT_")}
    env |= {"METERKIT_DATABASE_URL": pooled, "METERKIT_DB_PGBOUNCER": "1", "METERKIT_DB_SESSION_URL": db.url}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    port = make_url(db.url).port or 5432
    assert f":{port}/" in done.stdout and f":{bouncer}/" not in done.stdout, done.stdout


# ---------------------------------------------------------------- the pooler's own pool full


def test_pgbouncers_pool_full_answers_503(api: Api, db: Database, clock: FrozenClock) -> None:
    """pgbouncer keeps one server connection and a client holds it in a transaction: the
    gateway's statement waits query_wait_timeout (1 s), pgbouncer answers an error and hangs up;
    that is a 503 with Retry-After too (the connection lost), nothing written, and then served."""
    seed_catalog(api)
    tenant = api.create_tenant("Queued")
    api(SET_SUB, {"t": tenant, "i": {"planKey": "pro"}})
    key = api.tenant_key(tenant)
    auth = {"Authorization": f"Bearer {key}"}
    body = {"primitive": "email.send", "idempotency_key": "queued"}
    with pgbouncer(db.url, pool_mode="transaction", pool_size=1, query_wait_timeout=1) as port:
        settings = Settings(env="test", database_url=through(db.url, port), db_pgbouncer=True, auth_cache_seconds=600)
        engine = engine_for(settings)
        try:
            with TestClient(create_app(settings, engine=engine, clock=clock)) as client:
                assert client.get("/v1/status", headers=auth).status_code == 200  # connected, key cached
                before = count_rows(db.engine, "usage_event", "ledger_entry")
                with psycopg.connect(libpq(through(db.url, port)), prepare_threshold=None) as holder:
                    holder.execute("SELECT 1")  # a transaction left open: pgbouncer's one server connection
                    r = client.post("/v1/charge", json=body, headers=auth)
                    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
                    assert r.json()["error"]["code"] == "database_unavailable"
                    holder.rollback()
                assert count_rows(db.engine, "usage_event", "ledger_entry") == before
                r = client.post("/v1/charge", json=body, headers=auth)
                assert r.status_code == 200 and r.json()["replayed"] is False, r.text
        finally:
            engine.dispose()
