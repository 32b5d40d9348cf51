"""Exactly-once and no-overspend under concurrency, through HTTP against a real uvicorn,
on SQLite and PostgreSQL (issue 4, section 8)."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import text

from app.core.auth import TenantScope
from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.credits import ledger
from app.main import create_app
from app.settings import Settings
from tests.conftest import Api, Database, count_rows
from tests.fixtures_catalog import KIT, PLAN, SET_SUB
from tests.live import free_port, serve_in_thread, start_subprocess

CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename
  ... on Charged { eventId creditsRemaining replayed } ... on InsufficientCredits { available } } }"""
RESERVE = """mutation($i: MeterInput!) { reserve(input: $i) { __typename ... on Hold { id } } }"""
SETTLE = """mutation($h: ID!) { settle(holdId: $h) { __typename ... on Charged { eventId replayed }
  ... on HoldClosed { status } } }"""
RELEASE = """mutation($h: ID!) { release(holdId: $h) { __typename ... on Hold { status } } }"""


def make_tenant(api: Api, *, quota: int = 100_000, credits: int = 500, overage: str = "refuse") -> tuple[str, str]:
    api(KIT, {"i": {"key": "kit_c", "name": "C", "allowedPrimitives": ["email.send", "research.*"]}})
    api(
        PLAN,
        {
            "i": {
                "key": "plan_c",
                "name": "C",
                "accountKitId": "kit_c",
                "period": "month",
                "overage": overage,
                "quotas": [{"primitive": "email.send", "quota": quota}],
            }
        },
    )
    tid = api.create_tenant("Conc")
    api(SET_SUB, {"t": tid, "i": {"planKey": "plan_c"}})
    with unit_of_work(api.db.engine) as s:
        scope = TenantScope(tid)
        have = ledger.lock_account(s.connection(), scope).balance
        if credits * 1_000_000 > have:
            ledger.grant(
                s,
                scope,
                FrozenClock(datetime.now(UTC)),
                amount=credits * 1_000_000 - have,
                source="adjustment",
                grant_key="top-up",
            )
    return tid, api.tenant_key(tid)


async def fire(base: str, key: str, bodies: list[dict[str, Any]], concurrency: int = 100) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:

        async def one(body: dict[str, Any]) -> dict[str, Any]:
            r = await client.post("/graphql", json=body, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            data = r.json()
            assert not data.get("errors"), data
            return data["data"]  # type: ignore[no-any-return]

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def balance(db: Database, tid: str) -> tuple[int, int, int]:
    with db.engine.connect() as c:
        bal, reserved = c.execute(
            text("SELECT balance, reserved FROM credit_account WHERE tenant_id = :t"), {"t": tid}
        ).one()
        total = c.execute(
            text("SELECT coalesce(sum(amount), 0) FROM ledger_entry WHERE tenant_id = :t"), {"t": tid}
        ).scalar_one()
    return int(bal), int(reserved), int(total)


def live_app(db: Database, clock: Any = None) -> Any:
    # These storms fire up to 100 requests at once on one key to test the database's guarantees,
    # not the edge's per-key limit (METERKIT_MAX_IN_FLIGHT_PER_KEY, tests/http/test_edge_limits.py): off.
    settings = Settings(env="test", database_url=db.url, max_in_flight_per_key=0)
    return create_app(settings, engine=db.engine, clock=clock)


def test_thousand_charges_against_500_credits(api: Api, db: Database) -> None:
    tid, key = make_tenant(api, credits=500)
    bodies = [
        {"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": f"c{i}"}}}
        for i in range(1000)
    ]
    with serve_in_thread(live_app(db)) as base:
        results = asyncio.run(fire(base, key, bodies))
    kinds = [r["charge"]["__typename"] for r in results]
    assert kinds.count("Charged") == 510
    assert kinds.count("InsufficientCredits") == 490
    bal, reserved, total = balance(db, tid)
    assert bal == -10_000_000 and total == bal and reserved == 0


def test_same_key_fifty_times_debits_once(api: Api, db: Database) -> None:
    tid, key = make_tenant(api, credits=500)
    body = {"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": "same"}}}
    with serve_in_thread(live_app(db)) as base:
        results = asyncio.run(fire(base, key, [body] * 50, concurrency=50))
        assert len({r["charge"]["eventId"] for r in results}) == 1
        assert sum(1 for r in results if not r["charge"]["replayed"]) == 1
        before = count_rows(db.engine, "ledger_entry", "usage_event", "usage_counter")
        other = {
            "query": CHARGE,
            "variables": {"i": {"primitive": "email.send", "idempotencyKey": "same", "quantity": 2}},
        }
        conflict = asyncio.run(fire(base, key, [other]))
    assert conflict[0]["charge"]["__typename"] == "IdempotencyConflict"
    assert count_rows(db.engine, "ledger_entry", "usage_event", "usage_counter") == before
    bal, _, total = balance(db, tid)
    assert bal == 499_000_000 == total


def test_two_hundred_reserves_settle_release(api: Api, db: Database) -> None:
    tid, key = make_tenant(api, credits=500)
    bodies = [
        {"query": RESERVE, "variables": {"i": {"primitive": "research.thorough", "idempotencyKey": f"r{i}"}}}
        for i in range(200)
    ]
    with serve_in_thread(live_app(db)) as base:
        results = asyncio.run(fire(base, key, bodies))
        holds = [r["reserve"]["id"] for r in results if r["reserve"]["__typename"] == "Hold"]
        assert len(holds) == 100
        assert balance(db, tid)[1] == 500_000_000
        twice = asyncio.run(fire(base, key, [{"query": SETTLE, "variables": {"h": holds[0]}}] * 2, concurrency=2))
        assert {t["settle"]["eventId"] for t in twice} and len({t["settle"]["eventId"] for t in twice}) == 1
        assert (
            asyncio.run(fire(base, key, [{"query": RELEASE, "variables": {"h": holds[1]}}]))[0]["release"]["status"]
            == "released"
        )
        late = asyncio.run(fire(base, key, [{"query": SETTLE, "variables": {"h": holds[1]}}]))[0]["settle"]
    assert late == {"__typename": "HoldClosed", "status": "released"}
    bal, reserved, total = balance(db, tid)
    assert bal == total == 495_000_000
    assert reserved == 98 * 5_000_000


def test_two_hundred_charges_against_quota_of_100(api: Api, db: Database) -> None:
    tid, key = make_tenant(api, quota=100, credits=1000)
    bodies = [
        {"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": f"q{i}"}}}
        for i in range(200)
    ]
    with serve_in_thread(live_app(db)) as base:
        results = asyncio.run(fire(base, key, bodies))
    kinds = [r["charge"]["__typename"] for r in results]
    assert kinds.count("Charged") == 100
    assert kinds.count("QuotaExceeded") == 100
    with db.engine.connect() as c:
        assert c.execute(text("SELECT used FROM usage_counter WHERE tenant_id = :t"), {"t": tid}).scalar_one() == 100


def test_period_boundary_counts_each_call_once(api: Api, db: Database, clock: FrozenClock) -> None:
    tid, key = make_tenant(api, quota=3, credits=100)
    clock.at = datetime(2026, 7, 31, 23, 59, 59, 999000, tzinfo=UTC)
    with serve_in_thread(live_app(db, clock)) as base:

        def go(i: int) -> str:
            body = {"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": f"p{i}"}}}
            return str(asyncio.run(fire(base, key, [body]))[0]["charge"]["__typename"])

        assert [go(i) for i in range(4)] == ["Charged", "Charged", "Charged", "QuotaExceeded"]
        clock.at = clock.at + timedelta(milliseconds=1)  # exactly 2026-08-01T00:00:00Z: the new period
        assert go(4) == "Charged"
        assert go(0) == "Charged"  # a replay of July's key stays in July: not counted again
    with db.engine.connect() as c:
        rows = c.execute(
            text("SELECT period_start, used FROM usage_counter WHERE tenant_id = :t ORDER BY period_start"), {"t": tid}
        ).all()
    assert [r.used for r in rows] == [3, 1]


def test_crash_mid_load_then_resend(api: Api, db: Database) -> None:
    """SIGKILL the server during concurrent load; resend every unacknowledged request with its key."""
    tid, key = make_tenant(api, credits=10_000, quota=100_000)
    port = free_port()
    keys = [f"k{i}" for i in range(400)]
    acked: dict[str, str] = {}

    async def load(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:

            async def one(k: str) -> None:
                try:
                    r = await client.post(
                        "/graphql",
                        headers={"Authorization": f"Bearer {key}"},
                        json={"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": k}}},
                    )
                    data = r.json()["data"]["charge"]
                    if data["__typename"] == "Charged":
                        acked[k] = data["eventId"]
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    pass  # not acknowledged: resent below

            async def killer() -> None:
                while len(acked) < 60:
                    await asyncio.sleep(0.005)
                proc.send_signal(signal.SIGKILL)

            await asyncio.gather(killer(), *(one(k) for k in keys))

    proc = start_subprocess(db.url, port)
    try:
        asyncio.run(load(f"http://127.0.0.1:{port}"))
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        assert 60 <= len(acked) < len(keys)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc = start_subprocess(db.url, port)
    try:
        bodies = [{"query": CHARGE, "variables": {"i": {"primitive": "email.send", "idempotencyKey": k}}} for k in keys]
        results = asyncio.run(fire(f"http://127.0.0.1:{port}", key, bodies, concurrency=20))
    finally:
        proc.kill()
        proc.wait(10)
    by_key = {k: r["charge"] for k, r in zip(keys, results, strict=True)}
    assert all(v["__typename"] == "Charged" for v in by_key.values())
    for k, event_id in acked.items():  # every acknowledged charge is in the ledger, under the same event
        assert by_key[k]["eventId"] == event_id and by_key[k]["replayed"] is True
    with db.engine.connect() as c:
        events = c.execute(text("SELECT count(*) FROM usage_event WHERE tenant_id = :t"), {"t": tid}).scalar_one()
        debits = c.execute(
            text("SELECT count(*) FROM ledger_entry WHERE tenant_id = :t AND kind = 'debit'"), {"t": tid}
        ).scalar_one()
        used = c.execute(text("SELECT used FROM usage_counter WHERE tenant_id = :t"), {"t": tid}).scalar_one()
    assert events == debits == used == len(keys)
    bal, _, total = balance(db, tid)
    assert bal == total == (10_000 - len(keys)) * 1_000_000
