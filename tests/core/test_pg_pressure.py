"""The database under pressure (issue 17, item 6): a full pool or a server out of connection
slots is answered 503 + Retry-After (REST, the JSON error shape) and a typed, retryable GraphQL
error, never 500 / "Unexpected error.", and writes nothing; the same request succeeds once a
connection is free. Pool size, overflow and timeout come from the settings."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
import stripe
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from starlette.testclient import TestClient

from app.core.clock import FrozenClock
from app.core.db import engine_for, normalize_url
from app.main import create_app
from app.settings import Settings
from tests.conftest import PG_URL, REQUIRE_PG, Api, Database, _pg_admin, count_rows
from tests.error_shape import without_request_id
from tests.fixtures_catalog import SET_SUB, seed_catalog
from tests.live import BackgroundServer, free_port, serve_in_thread
from tests.metering.test_metering_concurrency import make_tenant
from tests.ws_client import GraphQLWS

CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename ... on Charged { eventId replayed } } }"""
WRITTEN = ("ledger_entry", "usage_event", "usage_counter", "credit_hold")
TINY = {"db_pool_size": 1, "db_max_overflow": 0, "db_pool_timeout_seconds": 0.2}
UNAVAILABLE = {"code": "DATABASE_UNAVAILABLE", "retryable": True, "retryAfterSeconds": 1}


def tenant_with_key(api: Api) -> tuple[str, str]:
    seed_catalog(api)
    tid = api.create_tenant("Pressed")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    return tid, api.tenant_key(tid)


def tiny_app(db: Database, clock: FrozenClock, url: str | None = None, **extra: Any) -> tuple[Any, Engine]:
    settings = Settings(env="test", database_url=url or db.url, **{**TINY, **extra})
    engine = engine_for(settings)
    return create_app(settings, engine=engine, clock=clock), engine


SECRET = "whsec_pressure"


def signed_event() -> tuple[str, dict[str, str]]:
    """An event we do not act on (recorded as "ignored"), and its Stripe-Signature header."""
    now = int(time.time())
    event = json.dumps({"id": "evt_pressure", "type": "customer.created", "created": now, "data": {"object": {}}})
    return event, {"Stripe-Signature": stripe.WebhookSignature.generate_signature_header(event, SECRET, timestamp=now)}


def assert_503(r: Any) -> dict[str, Any]:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    error = r.json()["error"]
    assert error["code"] == "database_unavailable" and error["retryable"] is True, error
    return dict(error)


def test_pool_settings_reach_the_engine(db: Database) -> None:
    engine = engine_for(Settings(database_url=db.url, db_pool_size=3, db_max_overflow=4, db_pool_timeout_seconds=0.5))
    try:
        pool: Any = engine.pool
        assert (pool.size(), pool._max_overflow, pool._timeout) == (3, 4, 0.5)
    finally:
        engine.dispose()
    plain = engine_for(Settings(database_url=db.url))
    default: Any = plain.pool
    assert (default.size(), default._max_overflow, default._timeout) == (
        (20, 20, 5.0) if db.backend == "postgres" else (40, 20, 5.0)
    )
    plain.dispose()


def test_a_full_pool_answers_503_with_retry_after_writes_nothing(api: Api, db: Database, clock: FrozenClock) -> None:
    tid, key = tenant_with_key(api)
    # Warm: the key is verified and cached, so the resolvers themselves meet the full pool.
    warm_app, engine = tiny_app(db, clock, auth_cache_seconds=600)
    cold_app = create_app(Settings(env="test", database_url=db.url, auth_cache_seconds=0), engine=engine, clock=clock)
    # Stripe signs with the wall clock, so the webhook's app reads the wall clock too.
    hooks = Settings(env="test", database_url=db.url, stripe_webhook_secret=SECRET)
    hooks_app = create_app(hooks, engine=engine, clock=FrozenClock(datetime.now(UTC)))
    auth = {"Authorization": f"Bearer {key}"}
    charge = {"primitive": "email.send", "idempotency_key": "full-1"}
    gql = {"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": "full-2"}}}
    try:
        with TestClient(warm_app) as warm, TestClient(cold_app) as cold, TestClient(hooks_app) as stripe_hooks:
            assert warm.get("/v1/status", headers=auth).status_code == 200
            responses = warm.get("/openapi.json").json()["paths"]["/v1/charge"]["post"]["responses"]
            assert "database_unavailable" in responses["503"]["description"]  # documented for every route
            before = count_rows(db.engine, *WRITTEN)
            held = engine.connect()  # the pool's only connection: every request now waits 0.2 s and gives up
            try:
                assert_503(warm.post("/v1/charge", json=charge, headers=auth))  # the hot lane
                assert_503(warm.post("/v1/reserve", json={**charge, "idempotency_key": "r"}, headers=auth))
                assert_503(warm.get("/v1/status", headers=auth))
                r = warm.post("/graphql", json=gql, headers=auth)
                assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
                (error,) = r.json()["errors"]
                assert (
                    without_request_id(error["extensions"]) == UNAVAILABLE and error["message"] != "Unexpected error."
                ), error
                # The key lookup at the edge (nothing cached) meets the full pool too.
                assert_503(cold.post("/graphql", json=gql, headers=auth))
                assert_503(cold.post("/v1/charge", json=charge, headers=auth))
                # A Stripe event: 503 + Retry-After, not 500 (Stripe redelivers either way; 503 says why).
                event, signed = signed_event()
                assert_503(stripe_hooks.post("/webhooks/stripe", content=event, headers=signed))
            finally:
                held.close()
            assert count_rows(db.engine, *WRITTEN) == before
            # A connection is free again: the same requests go through, each applied once.
            r = warm.post("/v1/charge", json=charge, headers=auth)
            assert r.status_code == 200 and r.json()["replayed"] is False, r.text
            data = warm.post("/graphql", json=gql, headers=auth).json()["data"]["charge"]
            assert data["__typename"] == "Charged" and data["replayed"] is False
            r = stripe_hooks.post("/webhooks/stripe", content=event, headers=signed)
            assert r.status_code == 200 and r.json()["outcome"] == "ignored", r.text
    finally:
        engine.dispose()
    after = count_rows(db.engine, "usage_event")
    assert after["usage_event"] == before["usage_event"] + 2


def _postgres_only() -> list[Any]:
    return [pytest.param("postgres", marks=pytest.mark.postgres)] if PG_URL or REQUIRE_PG else []


@contextmanager
def role_with_connections(db: Database, limit: int = 1) -> Iterator[str]:
    """A throwaway login role allowed `limit` connections (CONNECTION LIMIT) with rights on the
    test's throwaway database; yields that database's URL as the role."""
    role = f"mk_lim_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT {int(limit)}'))
    grants = [
        f'GRANT USAGE ON SCHEMA public TO "{role}"',
        f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"',
        f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"',
        f'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO "{role}"',
    ]
    with db.engine.connect() as c:
        for grant in grants:
            c.execute(text(grant))
        c.commit()
    try:
        yield make_url(normalize_url(db.url)).set(username=role).render_as_string(hide_password=False)
    finally:
        with db.engine.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"))
            c.execute(text(f'DROP OWNED BY "{role}"'))  # its grants in this database
            c.commit()
        with admin.connect() as c:
            c.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


def slot_freed(db: Database, role: str) -> None:
    """A closed connection's backend leaves the server a moment after the client hangs up."""
    deadline = time.monotonic() + 10
    query = text("SELECT count(*) FROM pg_stat_activity WHERE usename = :r")
    while True:
        with db.engine.connect() as c:
            if c.execute(query, {"r": role}).scalar_one() == 0:
                return
        assert time.monotonic() < deadline, "the role's connection never left"
        time.sleep(0.02)


@pytest.mark.parametrize("db", _postgres_only(), indirect=True)
def test_a_server_out_of_connection_slots_answers_503(api: Api, db: Database, clock: FrozenClock) -> None:
    tid, key = tenant_with_key(api)
    auth = {"Authorization": f"Bearer {key}"}
    charge = {"primitive": "email.send", "idempotency_key": "slots-1"}
    gql = {"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": "slots-2"}}}
    with role_with_connections(db) as url:
        app, engine = tiny_app(db, clock, url=url, auth_cache_seconds=0)
        try:
            with TestClient(app) as client:
                before = count_rows(db.engine, *WRITTEN)
                libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
                with psycopg.connect(libpq):  # the role's one slot: the server refuses the gateway's connection
                    error = assert_503(client.post("/v1/charge", json=charge, headers=auth))
                    assert "refused" in error["message"]
                    r = client.post("/graphql", json=gql, headers=auth)
                    assert_503(r)
                assert count_rows(db.engine, *WRITTEN) == before
                slot_freed(db, make_url(url).username or "")
                r = client.post("/v1/charge", json=charge, headers=auth)
                assert r.status_code == 200 and r.json()["replayed"] is False, r.text
                data = client.post("/graphql", json=gql, headers=auth).json()["data"]["charge"]
                assert data["__typename"] == "Charged"
        finally:
            engine.dispose()


@pytest.mark.parametrize("db", _postgres_only(), indirect=True)
def test_a_server_that_refuses_connections_answers_503(api: Api, db: Database, clock: FrozenClock) -> None:
    _, key = tenant_with_key(api)
    nowhere = make_url(normalize_url(db.url)).set(port=free_port()).render_as_string(hide_password=False)
    app, engine = tiny_app(db, clock, url=nowhere, auth_cache_seconds=0)
    try:
        with TestClient(app) as client:
            auth = {"Authorization": f"Bearer {key}"}
            assert_503(client.get("/v1/status", headers=auth))
            assert_503(client.post("/graphql", json={"query": "{ __typename }"}, headers=auth))
    finally:
        engine.dispose()


@pytest.mark.parametrize("db", _postgres_only(), indirect=True)
def test_charges_under_load_with_few_server_slots_are_200_or_503_and_retries_apply_once(
    api: Api, db: Database, clock: FrozenClock
) -> None:
    """The issue's run: 400 concurrent charges while the server has few slots for the gateway
    (its role may open 4 connections, its pool would open 40). Every answer is 200 or 503 with
    Retry-After, never 500; each 503 wrote nothing, so resending those keys charges each once."""
    tid, key = make_tenant(api, credits=10_000, quota=100_000)
    keys = [f"load-{i}" for i in range(400)]
    with role_with_connections(db, limit=4) as url:
        # The pool, not the key's in-flight limit, is what runs out here.
        settings = Settings(
            env="test",
            database_url=url,
            db_pool_size=20,
            db_max_overflow=20,
            db_pool_timeout_seconds=0.5,
            max_in_flight_per_key=0,
        )
        engine = engine_for(settings)
        try:
            with serve_in_thread(create_app(settings, engine=engine, clock=clock)) as base:
                first = asyncio.run(_charge_all(base, key, keys))
                statuses = Counter(status for status, _ in first.values())
                assert set(statuses) <= {200, 503}, statuses
                assert statuses[503] > 0 and statuses[200] > 0, statuses  # the slots did run out
                assert all(r == "1" for status, r in first.values() if status == 503)
                charged = count_rows(db.engine, "usage_event")["usage_event"]
                assert charged == statuses[200]  # a 503 wrote nothing
                retry = [k for k, (status, _) in first.items() if status == 503]
                for _ in range(50):  # as a client does: after Retry-After, the same keys again
                    if not retry:
                        break
                    again = asyncio.run(_charge_all(base, key, retry, concurrency=4))
                    assert {status for status, _ in again.values()} <= {200, 503}
                    retry = [k for k, (status, _) in again.items() if status == 503]
                assert retry == []
        finally:
            engine.dispose()
    assert count_rows(db.engine, "usage_event")["usage_event"] == len(keys)
    with db.engine.connect() as c:
        used = c.execute(text("SELECT used FROM usage_counter WHERE tenant_id = :t"), {"t": tid}).scalar_one()
    assert used == len(keys)


async def _charge_all(base: str, key: str, keys: list[str], concurrency: int = 100) -> dict[str, tuple[int, str]]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def one(k: str) -> tuple[int, str]:
            body = {"primitive": "email.send", "idempotency_key": k}
            r = await client.post("/v1/charge", json=body, headers={"Authorization": f"Bearer {key}"})
            return r.status_code, r.headers.get("retry-after", "")

        return dict(zip(keys, await asyncio.gather(*(one(k) for k in keys)), strict=True))


def test_a_websocket_meeting_the_full_pool_is_told_to_try_again_later(
    api: Api, db: Database, clock: FrozenClock
) -> None:
    """connection_init checks the key in the database: with no connection to be had, the socket
    closes with 1013 (Try Again Later), not an internal error; with one free again, it is served."""
    _, key = tenant_with_key(api)
    app, engine = tiny_app(db, clock, auth_cache_seconds=0)
    try:
        with BackgroundServer(app) as server:
            held = engine.connect()
            try:
                with GraphQLWS(server.url, key) as ws:
                    assert ws.close_code() == 1013
            finally:
                held.close()
            with GraphQLWS(server.url, key) as ws:
                ws.ack()
                ws.subscribe("b", "subscription { balanceChanged { available } }")
                assert ws.next("b")["balanceChanged"]["available"]
    finally:
        engine.dispose()


def test_a_subscription_meeting_the_full_pool_gets_the_typed_error(api: Api, db: Database, clock: FrozenClock) -> None:
    """A subscription re-reads after a change; with no connection to be had then, its error says
    DATABASE_UNAVAILABLE and retryable (subscribe again), never "Unexpected error."."""
    tid, key = tenant_with_key(api)
    app, engine = tiny_app(db, clock, auth_cache_seconds=600)
    try:
        with BackgroundServer(app) as server, GraphQLWS(server.url, key) as ws:
            ws.ack()
            ws.subscribe("b", "subscription { balanceChanged { available } }")
            assert ws.next("b")["balanceChanged"]["available"]
            held = engine.connect()
            try:
                # A charge through another engine (the tests' own): the hub hears it, the re-read finds no connection.
                charged = api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "sub-1"}}, key=key)
                assert charged["charge"]["__typename"] == "Charged"
                message = ws.recv(timeout=10)
            finally:
                held.close()
    finally:
        engine.dispose()
    errors = message["payload"] if message["type"] == "error" else message["payload"].get("errors")
    assert errors and without_request_id(errors[0]["extensions"]) == UNAVAILABLE, message
    assert errors[0]["message"] != "Unexpected error."
