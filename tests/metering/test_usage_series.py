"""Usage over time: every event records its key, hourly rollups are kept in the charge's own
transaction (charge, chargeBatch, settle), series read them at a constant number of statements,
and usage lines carry the credits spent in the period."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import event, text

from app.core import public_ids
from app.core.clock import FrozenClock
from app.core.db import held_driver
from tests.conftest import Api, count_rows
from tests.fixtures_catalog import SET_SUB, seed_catalog
from tests.metering.test_metering_basic import CHARGE, RESERVE, SETTLE
from tests.metering.test_metering_reads import BATCH, counting

GRANT = """mutation($t: ID!, $a: Credits!, $k: String!) { grantCredits(tenantId: $t, amount: $a, idempotencyKey: $k) {
  __typename } }"""
MINT = """mutation($s: [ApiKeyScope!]) { createApiKey(scopes: $s) { ... on CreatedApiKey { secret apiKey { id } } } }"""
SERIES = """query($f: DateTime!, $t: DateTime!, $i: UsageInterval!, $p: String, $g: UsageGroupBy) {
  usageSeries(from: $f, to: $t, interval: $i, primitive: $p, groupBy: $g) {
    start primitive apiKeyId quantity credits } }"""
HISTORY = """query($p: String, $k: ID, $f: DateTime, $t: DateTime, $n: Int, $a: String) {
  usageHistory(primitive: $p, apiKeyId: $k, from: $f, to: $t, first: $n, after: $a) {
    nodes { id primitive quantity creditsUsed apiKeyId apiKey { id scopes } }
    edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }"""


def _tenant(api: Api) -> tuple[str, str]:
    seed_catalog(api)
    tid = api.create_tenant("Acme")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    return tid, api.tenant_key(tid)


def _key(api: Api, tenant_key: str, scopes: list[str]) -> tuple[str, str]:
    made = api(MINT, {"s": scopes}, key=tenant_key)["createApiKey"]
    return made["secret"], made["apiKey"]["id"]


def _charge(api: Api, key: str, primitive: str, ikey: str, quantity: int = 1) -> dict[str, Any]:
    res = api(CHARGE, {"i": {"primitive": primitive, "idempotencyKey": ikey, "quantity": quantity}}, key=key)
    assert res["charge"]["__typename"] == "Charged", res
    return res["charge"]  # type: ignore[no-any-return]


def _key_ids(api: Api) -> list[str | None]:
    with api.db.engine.connect() as c:
        return [r[0] for r in c.execute(text("SELECT api_key_id FROM usage_event ORDER BY id"))]


def test_every_usage_event_records_its_key(api: Api) -> None:
    tid, full = _tenant(api)
    meter, meter_id = _key(api, full, ["METER", "READ"])
    _charge(api, full, "email.send", "a")
    _charge(api, meter, "email.send", "b")
    api(BATCH, {"items": [{"item": {"primitive": "search.web", "idempotencyKey": "c"}}]}, key=meter)
    hold = api(RESERVE, {"i": {"primitive": "research.quick", "idempotencyKey": "h"}}, key=full)["reserve"]
    api(SETTLE, {"h": hold["id"]}, key=meter)  # the settling key makes the event
    api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "op"}}, tenant=tid)  # the operator's key
    full_id = _event_key(api, "a")
    assert full_id is not None and full_id.startswith("key_")
    operator_id = _event_key(api, "op")
    assert _key_ids(api) == [full_id, meter_id, meter_id, meter_id, operator_id]
    assert len({full_id, meter_id, operator_id}) == 3
    # History filters by key; a tenant never sees the operator key that charged for it.
    mine = api(HISTORY, {"k": meter_id}, key=full)["usageHistory"]["nodes"]
    assert [n["primitive"] for n in mine] == ["research.quick", "search.web", "email.send"]
    assert {n["apiKeyId"] for n in mine} == {meter_id} and mine[0]["apiKey"]["scopes"] == ["READ", "METER"]
    newest = api(HISTORY, {}, key=full)["usageHistory"]["nodes"][0]
    assert newest["primitive"] == "email.send" and newest["apiKeyId"] is None and newest["apiKey"] is None
    as_operator = api(HISTORY, {"n": 1}, tenant=tid)["usageHistory"]["nodes"][0]
    assert as_operator["apiKeyId"] == operator_id


def _event_key(api: Api, idempotency_key: str) -> str | None:
    with api.db.engine.connect() as c:
        row = c.execute(text("SELECT api_key_id FROM usage_event WHERE idempotency_key = :k"), {"k": idempotency_key})
        return row.scalar_one()  # type: ignore[no-any-return]


def test_series_by_hour_and_day_grouped_and_filtered(api: Api, clock: FrozenClock) -> None:
    tid, full = _tenant(api)
    other, other_id = _key(api, full, ["METER"])
    start = clock.now()  # 2026-07-01 12:00 UTC
    _charge(api, full, "email.send", "1", quantity=2)  # 2 credits
    clock.advance(seconds=1800)
    _charge(api, other, "search.web", "2")  # 12:30
    clock.advance(seconds=3600)
    _charge(api, full, "email.send", "3")  # 13:30
    clock.advance(days=1)
    _charge(api, other, "email.send", "4", quantity=3)  # next day 13:30
    full_id = _event_key(api, "1")

    hours = api(SERIES, {"f": start.isoformat(), "t": (start + timedelta(hours=3)).isoformat(), "i": "HOUR"}, key=full)
    assert [(p["start"], p["quantity"], p["credits"]) for p in hours["usageSeries"]] == [
        ("2026-07-01T12:00:00+00:00", 3, "3"),
        ("2026-07-01T13:00:00+00:00", 1, "1"),
        ("2026-07-01T14:00:00+00:00", 0, "0"),  # empty hours are zeros, so a chart needs no gaps filled
    ]
    assert all(p["primitive"] is None and p["apiKeyId"] is None for p in hours["usageSeries"])

    # Days: bounds are aligned (from floored, to rounded up), each day the sum of its hours.
    days_q = {"f": (start + timedelta(hours=5)).isoformat(), "t": (start + timedelta(days=2)).isoformat(), "i": "DAY"}
    days = api(SERIES, days_q, key=full)["usageSeries"]
    assert [(p["start"], p["quantity"], p["credits"]) for p in days] == [
        ("2026-07-01T00:00:00+00:00", 4, "4"),
        ("2026-07-02T00:00:00+00:00", 3, "3"),
        ("2026-07-03T00:00:00+00:00", 0, "0"),
    ]
    by_primitive = api(SERIES, {**days_q, "g": "PRIMITIVE"}, key=full)["usageSeries"]
    assert [(p["start"][:10], p["primitive"], p["quantity"]) for p in by_primitive] == [
        ("2026-07-01", "email.send", 3),
        ("2026-07-01", "search.web", 1),
        ("2026-07-02", "email.send", 3),
        ("2026-07-02", "search.web", 0),
        ("2026-07-03", "email.send", 0),
        ("2026-07-03", "search.web", 0),
    ]
    by_key = api(SERIES, {**days_q, "g": "KEY", "p": "email.send"}, key=full)["usageSeries"]
    totals: dict[str, int] = {}
    for p in by_key:
        assert p["primitive"] == "email.send"
        totals[p["apiKeyId"]] = totals.get(p["apiKeyId"], 0) + p["quantity"]
    assert totals == {full_id: 3, other_id: 3}
    # The same series through Tenant.usageSeries, for an operator.
    op = api(
        """query($id: ID!, $f: DateTime!, $t: DateTime!) { tenant(id: $id) {
          usageSeries(from: $f, to: $t, interval: DAY) { start quantity credits } } }""",
        {"id": tid, "f": days_q["f"], "t": days_q["t"]},
    )["tenant"]["usageSeries"]
    assert [(p["quantity"], p["credits"]) for p in op] == [(4, "4"), (3, "3"), (0, "0")]


def test_a_read_only_key_reads_the_series_and_usage_lines_carry_credits(api: Api) -> None:
    tid, full = _tenant(api)
    read, _ = _key(api, full, ["READ"])
    _charge(api, full, "email.send", "1", quantity=4)
    _charge(api, full, "search.web", "2")
    usage = api("{ viewer { usage { quotas { primitive used credits } usage { primitive credits } } } }", key=read)
    quotas = usage["viewer"]["usage"]["quotas"]
    assert {"primitive": "email.send", "used": 4, "credits": "4"} in quotas
    assert {"primitive": "search.web", "used": 1, "credits": "1"} in quotas
    # One day: the day of the charges.
    now = api.client.app.state.meterkit.clock.now()  # type: ignore[attr-defined]
    day = api(SERIES, {"f": now.isoformat(), "t": (now + timedelta(seconds=1)).isoformat(), "i": "DAY"}, key=read)
    assert [(p["quantity"], p["credits"]) for p in day["usageSeries"]] == [(5, "5")]


def test_series_cost_the_same_statements_at_10_and_10000_events(api: Api, clock: FrozenClock) -> None:
    tid, full = _tenant(api)
    api(GRANT, {"t": tid, "a": "20000", "k": "lots"})
    start = clock.now() - timedelta(days=29)
    q = {"f": start.isoformat(), "t": (clock.now() + timedelta(hours=1)).isoformat(), "i": "DAY", "g": "PRIMITIVE"}

    def batch(n: int, tag: str) -> None:
        items = [{"item": {"primitive": "browser.navigate", "idempotencyKey": f"{tag}{i}"}} for i in range(n)]
        res = api(BATCH, {"items": items}, key=full)["chargeBatch"]
        assert {r["__typename"] for r in res} == {"Charged"}

    batch(10, "s")
    with counting(api.db.engine) as small:
        few = api(SERIES, q, key=full)["usageSeries"]
    for b in range(10):
        clock.advance(seconds=3600 * 7)  # spread over many hours and days
        batch(999, f"b{b}-")
    assert count_rows(api.db.engine, "usage_event")["usage_event"] == 10_000
    with counting(api.db.engine) as large:
        many = api(SERIES, {**q, "t": (clock.now() + timedelta(hours=1)).isoformat()}, key=full)["usageSeries"]
    assert sum(p["quantity"] for p in few) == 10 and sum(p["quantity"] for p in many) == 10_000
    assert sum(int(p["credits"]) for p in many) == 10_000
    assert len(small) == len(large), (small, large)
    series_reads = [s for s in large if "usage_rollup" in s]
    assert len(series_reads) == 1 and not any("usage_event" in s for s in large)
    with api.db.engine.connect() as c:
        rows = c.execute(text("SELECT count(*) FROM usage_rollup WHERE tenant_id = :t"), {"t": tid}).scalar_one()
    assert rows == 11  # one row per hour in which the tenant was charged, not per event


@contextmanager
def _driver_statements(api: Api) -> Iterator[list[str]]:
    """Every statement SQLite runs, including the hot path's (which skip SQLAlchemy's events)."""
    seen: list[str] = []

    def on_checkout(dbapi_conn: Any, *_: Any) -> None:
        dbapi_conn.set_trace_callback(seen.append)

    event.listen(api.db.engine, "checkout", on_checkout)
    held = held_driver(api.db.engine)  # SQLite's writers' connection, checked out once (app/core/db.py)
    if held is not None:
        held.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        event.remove(api.db.engine, "checkout", on_checkout)
        held = held_driver(api.db.engine)
        if held is not None:
            held.set_trace_callback(None)


def _transaction(seen: list[str], *, triggers: bool = False) -> list[str]:
    """The statements between BEGIN IMMEDIATE and COMMIT. SQLite's trace reports a statement again
    at the start of each trigger program it fires (the terms versions' triggers, migration 0025),
    with the same text: those echoes are left out unless `triggers`."""
    start = next(i for i, s in enumerate(seen) if s.startswith("BEGIN IMMEDIATE"))
    end = next(i for i, s in enumerate(seen) if i > start and s == "COMMIT")
    out = seen[start + 1 : end]
    if triggers:
        return out
    return [s for i, s in enumerate(out) if i == 0 or s != out[i - 1]]


def test_the_rollup_is_one_more_statement_in_the_charge_and_in_a_batch(api: Api) -> None:
    if api.db.backend != "sqlite":
        return  # the driver trace is SQLite's; PostgreSQL runs the same statements
    tid, full = _tenant(api)
    _charge(api, full, "email.send", "warm")
    with _driver_statements(api) as seen:
        _charge(api, full, "email.send", "s1")
    charge = _transaction(seen)
    # The charge transaction: lock + terms + key lookup + quota + price + first live bucket (one
    # statement), bucket update, ledger entry, account, event, counter, rate window (this kit limits
    # calls per minute), and the rollup upsert.
    assert len(charge) == 8, "\n".join(charge)
    assert sum("usage_rollup" in s for s in charge) == 1
    items = [{"item": {"primitive": "email.send", "idempotencyKey": f"b{i}"}} for i in range(5)]
    with _driver_statements(api) as seen:
        api(BATCH, {"items": items}, key=full)
    assert sum("usage_rollup" in s for s in _transaction(seen)) == 1  # set-based: one row per primitive and key


def test_a_batch_of_50_is_a_constant_number_of_statements(api: Api) -> None:
    """Set-based: the batch's statements do not grow with its items (one multi-row event insert)."""
    if api.db.backend != "sqlite":
        return  # the driver trace is SQLite's; PostgreSQL runs the same statements
    tid, full = _tenant(api)
    _charge(api, full, "email.send", "warm")
    items = [{"item": {"primitive": "email.send", "idempotencyKey": f"b{i}"}} for i in range(50)]
    with _driver_statements(api) as seen:
        res = api(BATCH, {"items": items}, key=full)["chargeBatch"]
    assert [r["__typename"] for r in res] == ["Charged"] * 50
    batch = _transaction(seen)
    assert sum(s.startswith("INSERT INTO usage_event") for s in batch) == 1, "\n".join(batch)
    codec = public_ids.codec(api.db.engine)
    ids = [codec.decode(public_ids.EVENT, r["eventId"]) for r in res]
    assert len(set(ids)) == 50 and ids == list(range(ids[0], ids[0] + 50))  # one insert, in order
    # Lock and facts, stored keys, sweep, quota; bucket, the 50 ledger entries (one INSERT), account,
    # the 50 events (one INSERT), counter, rate window, rollup: 11, as for a batch of 5 (was 60).
    assert len(batch) == 11, "\n".join(s[:120] for s in batch)
    assert sum(s.startswith("INSERT INTO ledger_entry") for s in batch) == 1
