"""The concurrency scenarios against TWO server processes sharing one database (issue 13):
every guarantee (no overspend, exactly once, quota, holds) is the database's, not a process's,
so the answers are exactly those of one process. On SQLite the two processes take turns on the
file's write lock (busy_timeout); on PostgreSQL they run in parallel on row locks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import text

from tests.conftest import Api, Database, count_rows
from tests.live import free_port, server_output, start_subprocess
from tests.metering.test_metering_concurrency import CHARGE, RELEASE, RESERVE, SETTLE, balance, make_tenant


@contextmanager
def two_servers(db: Database) -> Iterator[list[str]]:
    procs: list[Any] = []
    try:
        for _ in range(2):
            port = free_port()
            # 50 at once per server on one key: the database's guarantees, not the per-key limit.
            procs.append(start_subprocess(db.url, port, METERKIT_MAX_IN_FLIGHT_PER_KEY="0"))
            procs[-1].base = f"http://127.0.0.1:{port}"
        yield [p.base for p in procs]
    except AssertionError as exc:  # an unexpected answer: show what the servers logged
        logs = "\n".join(f"--- server {i} stderr ---\n{server_output(p)}" for i, p in enumerate(procs))
        raise AssertionError(f"{exc}\n{logs}") from exc
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


async def fire_both(bases: list[str], key: str, bodies: list[dict[str, Any]], per_server: int = 50) -> list[Any]:
    """Request i goes to server i % 2, all at once; answers in request order."""
    limits = httpx.Limits(max_connections=per_server, max_keepalive_connections=per_server)
    clients = [httpx.AsyncClient(base_url=b, limits=limits, timeout=120) for b in bases]
    try:

        async def one(i: int, body: dict[str, Any]) -> dict[str, Any]:
            r = await clients[i % len(clients)].post("/graphql", json=body, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            data = r.json()
            assert not data.get("errors"), data
            return data["data"]  # type: ignore[no-any-return]

        return list(await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies))))
    finally:
        for c in clients:
            await c.aclose()


def _charge(key: str, quantity: int = 1) -> dict[str, Any]:
    item = {"primitive": "email.send", "idempotencyKey": key, "quantity": quantity}
    return {"query": CHARGE, "variables": {"i": item}}


def test_two_processes_thousand_charges_against_500_credits(api: Api, db: Database) -> None:
    tid, key = make_tenant(api, credits=500)
    with two_servers(db) as bases:
        results = asyncio.run(fire_both(bases, key, [_charge(f"c{i}") for i in range(1000)]))
    kinds = [r["charge"]["__typename"] for r in results]
    assert kinds.count("Charged") == 510 and kinds.count("InsufficientCredits") == 490
    bal, reserved, total = balance(db, tid)
    assert bal == -10_000_000 and total == bal and reserved == 0


def test_two_processes_same_key_fifty_times_debits_once(api: Api, db: Database) -> None:
    tid, key = make_tenant(api, credits=500)
    with two_servers(db) as bases:
        results = asyncio.run(fire_both(bases, key, [_charge("same")] * 50))
        assert len({r["charge"]["eventId"] for r in results}) == 1
        assert sum(1 for r in results if not r["charge"]["replayed"]) == 1
        before = count_rows(db.engine, "ledger_entry", "usage_event", "usage_counter")
        conflicts = asyncio.run(fire_both(bases, key, [_charge("same", quantity=2)] * 2))
    assert [c["charge"]["__typename"] for c in conflicts] == ["IdempotencyConflict"] * 2
    assert count_rows(db.engine, "ledger_entry", "usage_event", "usage_counter") == before
    bal, _, total = balance(db, tid)
    assert bal == 499_000_000 == total


def test_two_processes_two_hundred_charges_against_quota_of_100(api: Api, db: Database) -> None:
    tid, key = make_tenant(api, quota=100, credits=1000)
    with two_servers(db) as bases:
        results = asyncio.run(fire_both(bases, key, [_charge(f"q{i}") for i in range(200)]))
    kinds = [r["charge"]["__typename"] for r in results]
    assert kinds.count("Charged") == 100 and kinds.count("QuotaExceeded") == 100
    with db.engine.connect() as c:
        assert c.execute(text("SELECT used FROM usage_counter WHERE tenant_id = :t"), {"t": tid}).scalar_one() == 100


def test_two_processes_two_hundred_reserves_settle_release(api: Api, db: Database) -> None:
    tid, key = make_tenant(api, credits=500)
    bodies = [
        {"query": RESERVE, "variables": {"i": {"primitive": "research.thorough", "idempotencyKey": f"r{i}"}}}
        for i in range(200)
    ]
    with two_servers(db) as bases:
        results = asyncio.run(fire_both(bases, key, bodies))
        holds = [r["reserve"]["id"] for r in results if r["reserve"]["__typename"] == "Hold"]
        assert len(holds) == 100
        assert balance(db, tid)[1] == 500_000_000
        # The same settle through both processes at once: one charge.
        twice = asyncio.run(fire_both(bases, key, [{"query": SETTLE, "variables": {"h": holds[0]}}] * 2))
        assert len({t["settle"]["eventId"] for t in twice}) == 1
        assert sorted(t["settle"]["replayed"] for t in twice) == [False, True]
        # A release in one process and a settle in the other, at once: exactly one wins.
        race = asyncio.run(
            fire_both(
                bases,
                key,
                [{"query": RELEASE, "variables": {"h": holds[1]}}, {"query": SETTLE, "variables": {"h": holds[1]}}],
            )
        )
    released = race[0]["release"].get("status") == "released"
    settled = race[1]["settle"]["__typename"] == "Charged"
    assert released != settled, race
    bal, reserved, total = balance(db, tid)
    assert bal == total == 500_000_000 - (1 + int(settled)) * 5_000_000
    assert reserved == 98 * 5_000_000
