"""SIGKILL during reserve/settle (issue 17, item 8), on SQLite and PostgreSQL: a server process is
killed while many reserve and settle calls are in flight. At the crash point nothing is half
applied: every hold is either open with its reservation, or settled with exactly one settle event
and debits summing to its settled amount; reserved credits equal the open holds and the balance the
ledger's sum. Every unacknowledged call is then resent with its key (a reserve's idempotency key, a
settle's hold id) to a restarted server: nothing is applied twice, and every acknowledged answer is
the one the retry replays."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
from sqlalchemy import text

from tests.conftest import Api, Database
from tests.live import free_port, server_output, start_subprocess
from tests.metering.test_metering_concurrency import balance, fire, make_tenant

RESERVE = """mutation($i: MeterInput!) { reserve(input: $i) { __typename ... on Hold { id amount replayed } } }"""
SETTLE = """mutation($h: ID!, $a: MeterInput) { settle(holdId: $h, actual: $a) { __typename
  ... on Charged { eventId creditsUsed replayed } } }"""
PRICE = 5_000_000  # research.thorough, per unit
N = 100  # holds settled under load, and as many reserved under load


def reserve_body(key: str) -> dict[str, Any]:
    item = {"primitive": "research.thorough", "idempotencyKey": key, "reference": key}
    return {"query": RESERVE, "variables": {"i": item}}


def settle_body(i: int, hold_id: str) -> dict[str, Any]:
    # Even holds settle a larger actual (2 units), odd ones the estimate.
    actual = {"primitive": "research.thorough", "idempotencyKey": "-", "quantity": 2, "reference": f"a{i}"}
    return {"query": SETTLE, "variables": {"h": hold_id, "a": actual if i % 2 == 0 else None}}


def holds(db: Database, tid: str) -> dict[str, Any]:
    """Each hold with its settle event(s) and the debits that carry its reference."""
    with db.engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT h.id, h.idempotency_key, h.status, h.amount, h.settled_amount, "
                "(SELECT count(*) FROM usage_event e WHERE e.tenant_id = h.tenant_id "
                " AND e.idempotency_key = 'hold:' || h.id), "
                "(SELECT coalesce(sum(e.credits), 0) FROM usage_event e WHERE e.tenant_id = h.tenant_id "
                " AND e.idempotency_key = 'hold:' || h.id), "
                "(SELECT coalesce(-sum(l.amount), 0) FROM ledger_entry l WHERE l.tenant_id = h.tenant_id "
                " AND l.kind = 'debit' AND l.reference = h.reference) "
                "FROM credit_hold h WHERE h.tenant_id = :t"
            ),
            {"t": tid},
        ).all()
    return {r[1]: r for r in rows}


def assert_whole(db: Database, tid: str) -> dict[str, Any]:
    """Nothing half-applied: the invariants that must hold at any crash point."""
    by_key = holds(db, tid)
    open_amount = 0
    for key, (_, _, status, amount, settled, events, event_credits, debited) in by_key.items():
        assert status in ("open", "settled"), (key, status)
        if status == "open":
            assert amount == PRICE and settled is None and events == 0 and debited == 0, key
            open_amount += amount
        else:
            assert events == 1 and settled == event_credits == debited, key
    bal, reserved, total = balance(db, tid)
    assert reserved == open_amount and bal == total
    return by_key


def test_sigkill_during_reserve_and_settle(api: Api, db: Database) -> None:
    tid, key = make_tenant(api, credits=10_000)
    # Settles and reserves interleaved, so both are in flight when the server dies.
    names = [name for i in range(N) for name in (f"settle:a{i}", f"reserve:b{i}")]
    bodies: list[dict[str, Any]] = []
    acked: dict[str, dict[str, Any]] = {}
    port = free_port()

    async def load(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:

            async def one(name: str, body: dict[str, Any]) -> None:
                try:
                    r = await client.post("/graphql", headers={"Authorization": f"Bearer {key}"}, json=body)
                    data = r.json()["data"]
                    got = data["settle" if name.startswith("settle") else "reserve"]
                    if got["__typename"] in ("Charged", "Hold"):
                        acked[name] = got
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    pass  # not acknowledged: resent below

            async def killer() -> None:
                while len(acked) < 40:
                    await asyncio.sleep(0.002)
                proc.send_signal(signal.SIGKILL)

            await asyncio.gather(killer(), *(one(n, b) for n, b in zip(names, bodies, strict=True)))

    proc = start_subprocess(db.url, port)  # real time: the holds are made by the server, not a frozen clock
    try:
        base = f"http://127.0.0.1:{port}"
        # N holds to settle under load (their references match their settles' debits).
        made = asyncio.run(fire(base, key, [reserve_body(f"a{i}") for i in range(N)], concurrency=20))
        hold_ids = [m["reserve"]["id"] for m in made]
        bodies = [body for i, h in enumerate(hold_ids) for body in (settle_body(i, h), reserve_body(f"b{i}"))]
        asyncio.run(load(base))
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL, server_output(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 40 <= len(acked) < len(bodies)  # killed mid-load: some calls answered, some not
    assert any(n.startswith("settle") for n in acked) and any(n.startswith("reserve") for n in acked)
    # The crash point: every hold whole, and every acknowledged call durable.
    at_crash = assert_whole(db, tid)
    for name in acked:
        kind, k = name.split(":")
        if kind == "settle":
            assert at_crash[k][2] == "settled", name
        else:
            assert at_crash[k][2] == "open", name

    # Restart and resend everything, acknowledged or not, with the same keys.
    proc = start_subprocess(db.url, port)
    try:
        results = asyncio.run(fire(f"http://127.0.0.1:{port}", key, bodies, concurrency=20))
    finally:
        proc.kill()
        proc.wait(10)
    for name, r in zip(names, results, strict=True):
        got = r["settle" if name.startswith("settle") else "reserve"]
        assert got["__typename"] in ("Charged", "Hold"), (name, got)
        if name in acked:  # the retry replays the acknowledged answer, it does not apply again
            assert got["replayed"] is True, name
            assert got.get("eventId", got.get("id")) == acked[name].get("eventId", acked[name].get("id")), name
    final = assert_whole(db, tid)
    assert len(final) == 2 * N  # one hold per reserve key: no reserve applied twice
    settled = [final[f"a{i}"] for i in range(N)]
    assert all(h[2] == "settled" for h in settled)
    assert all(final[f"b{i}"][2] == "open" for i in range(N))
    # Each settle charged once: 2 units for an even hold, the estimate for an odd one.
    assert [h[4] for h in settled] == [2 * PRICE if i % 2 == 0 else PRICE for i in range(N)]
    bal, reserved, total = balance(db, tid)
    assert reserved == N * PRICE
    assert bal == total == 10_000_000_000 - sum(h[4] for h in settled)
