"""PostgreSQL's one-round-trip charge (app/metering/pg_charge.py, migration 0012_pg_charge): the
common charge is one statement on the wire, every uncommon case falls back having written nothing,
and a scripted sequence answers and writes exactly as the full Python path does."""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text

from app.core.auth import TenantScope
from app.core.clock import FrozenClock
from app.core.db import connection_of_work
from app.core.errors import DomainError
from app.metering import charging, pg_charge, types
from tests.conftest import Api, Database, count_rows
from tests.fixtures_catalog import KIT, PLAN, SET_SUB
from tests.metering.test_metering_basic import CHARGE, MONEY
from tests.paths import ROOT

UPSERT = """mutation($i: PrimitiveInput!) { upsertPrimitive(input: $i) { __typename } }"""
GRANT = """mutation($t: ID!, $a: Credits!, $k: String!, $e: DateTime) {
  grantCredits(tenantId: $t, amount: $a, idempotencyKey: $k, expiresAt: $e) { __typename } }"""
NEW_KEY = """mutation($t: ID!) { createApiKey(tenantId: $t) { ... on CreatedApiKey { secret apiKey { id } } } }"""
BUDGET = """mutation($k: ID!, $i: KeyBudgetInput!) { setKeyBudget(apiKeyId: $k, input: $i) { __typename } }"""
POLICY = """mutation($t: ID, $q: [Int!], $l: Credits) {
  setAlertPolicy(tenantId: $t, quotaPercents: $q, lowBalanceCredits: $l) { __typename } }"""
RESERVE_TTL = """mutation($i: MeterInput!, $ttl: Int) { reserve(input: $i, ttlSeconds: $ttl) { __typename } }"""
WRITTEN = (*MONEY, "billing_period", "alert_event", "rate_window", "usage_rollup", "credit_account")


def seed(api: Api) -> None:
    cards = {"key": "cards.issue", "name": "Cards", "unit": "card", "category": "cards", "pricingRule": "fixed"}
    assert api(UPSERT, {"i": {**cards, "credits": "2"}})["upsertPrimitive"]["__typename"] == "Primitive"
    kit = {
        "key": "kit_t",
        "name": "T",
        "allowedPrimitives": ["email.*", "search.web", "cards.*", "browser.session.time"],
        "limits": [{"primitive": "email.send", "maxQuantityPerCall": 5, "callsPerMinute": 6}],
        "allowedConnections": ["gmail"],
    }
    assert api(KIT, {"i": kit})["upsertAccountKit"]["__typename"] == "AccountKit"
    plan = {
        "key": "plan_t",
        "name": "T",
        "accountKitId": "kit_t",
        "period": "month",
        "includedCredits": "50",
        "quotas": [{"primitive": "email.send", "quota": 1000}, {"primitive": "search.web", "quota": 4}],
    }
    assert api(PLAN, {"i": plan})["upsertPlan"]["__typename"] == "Plan"
    # Retired after the kit named it: a charge for it is refused as retired.
    assert api(UPSERT, {"i": {**cards, "credits": "2", "active": False}})["upsertPrimitive"]["__typename"]
    for key, credits in (("cards.big", "100"), ("cards.mid", "69")):  # past the balance; all that is left
        made = api(UPSERT, {"i": {**cards, "key": key, "credits": credits}})["upsertPrimitive"]
        assert made["__typename"] == "Primitive"


def tenant(api: Api, name: str) -> tuple[str, str]:
    tid = api.create_tenant(name)
    api(SET_SUB, {"t": tid, "i": {"planKey": "plan_t"}})
    return tid, api.tenant_key(tid)


def charge(api: Api, key: str, ik: str, primitive: str = "email.send", **extra: Any) -> dict[str, Any]:
    return dict(api(CHARGE, {"i": {"primitive": primitive, "idempotencyKey": ik, **extra}}, key=key)["charge"])


@contextmanager
def fast(on: bool) -> Iterator[dict[str, int]]:
    """The function on or off; yields what it answered meanwhile, outcome -> count."""
    was, was_batch, before = pg_charge.ENABLED, pg_charge.BATCH_ENABLED, dict(pg_charge.stats)
    pg_charge.ENABLED = pg_charge.BATCH_ENABLED = on
    seen: dict[str, int] = {}
    try:
        yield seen
    finally:
        pg_charge.ENABLED, pg_charge.BATCH_ENABLED = was, was_batch
        for k, v in pg_charge.stats.items():
            if v != before.get(k, 0):
                seen[k] = v - before.get(k, 0)


def rows(db: Database, tid: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a charge writes for one tenant, without the ids that differ between tenants."""
    queries = {
        "ledger": "SELECT kind, action, amount, balance_after, bucket_id IS NULL, reference, created_at "
        "FROM ledger_entry WHERE tenant_id = :t ORDER BY id",
        "events": "SELECT idempotency_key, request_hash, kind, primitive, quantity, credits, period_start, "
        "reference, connection, CAST(result AS TEXT), created_at, api_key_id IS NULL FROM usage_event "
        "WHERE tenant_id = :t ORDER BY id",
        "counters": "SELECT period_start, primitive, period_end, used, overage, credits FROM usage_counter "
        "WHERE tenant_id = :t ORDER BY 1, 2",
        "rollups": "SELECT hour_start, primitive, api_key_id = '', quantity, credits, events FROM usage_rollup "
        "WHERE tenant_id = :t ORDER BY 1, 2, 3",
        "rates": "SELECT primitive, window_start, calls FROM rate_window WHERE tenant_id = :t ORDER BY 1, 2",
        "buckets": "SELECT source, granted, remaining, expires_at FROM credit_bucket WHERE tenant_id = :t "
        "ORDER BY created_at, granted",
        "account": "SELECT balance, reserved, updated_at FROM credit_account WHERE tenant_id = :t",
        "periods": "SELECT start_at, end_at, plan_key, source FROM billing_period WHERE tenant_id = :t",
        "alerts": "SELECT type, CASE WHEN type IN ('credits.granted', 'hold.expired') THEN '' ELSE dedupe_key END, "
        "CAST(payload AS TEXT) "
        "LIKE '%bkt_%' FROM alert_event WHERE tenant_id = :t ORDER BY 1, 2",
        "holds": "SELECT idempotency_key, status, amount FROM credit_hold WHERE tenant_id = :t ORDER BY 1",
    }
    with db.engine.connect() as c:
        return {name: [tuple(r) for r in c.execute(text(q), {"t": tid})] for name, q in queries.items()}


def normalized(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Event ids differ between tenants: number them in order of appearance."""
    ids: dict[str, int] = {}
    out = []
    for a in answers:
        a = dict(a)
        for name in ("eventId", "event_id"):
            if name in a:
                a[name] = ids.setdefault(a[name], len(ids))
        out.append(a)
    return out


def script(api: Api, clock: FrozenClock, key: str) -> list[dict[str, Any]]:
    """Charges, replays, conflicts and every refusal the function answers, in one sequence."""
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("a", "email.send", {}),  # the first charge records the period (fallback)
        ("b", "email.send", {"quantity": 2}),
        ("b", "email.send", {"quantity": 2}),  # replay
        ("b", "email.send", {"quantity": 3}),  # conflict
        ("c", "email.send", {"quantity": 6}),  # per-call limit
        ("d", "search.web", {"quantity": 5}),  # quota exceeded
        ("e", "browser.navigate", {}),  # not entitled
        ("f", "nope.thing", {}),  # unknown primitive
        ("g", "cards.issue", {}),  # retired
        ("h", "email.send", {"connection": "slack"}),  # connection not in the kit
        ("i", "email.send", {"connection": "gmail", "reference": "r-1"}),
        ("j", "search.web", {}),
        ("k", "email.send", {"quantity": 5}),
        ("l", "email.send", {}),
        ("m", "email.send", {}),  # the 6th call this minute: the limit
        ("n", "email.send", {}),  # the 7th: per-minute limit
        ("a", "email.send", {}),  # replay of the first
        ("s", "search.web", {"quantity": 2}),  # crosses 50% and 75% of 4: alerts (fallback)
    ]
    out = [charge(api, key, ik, p, **extra) for ik, p, extra in steps]
    clock.advance(minutes=1)
    out += [charge(api, key, ik, "email.send") for ik in ("o", "p", "n")]
    clock.advance(hours=2)
    out += [charge(api, key, ik, "email.send", quantity=4) for ik in ("q", "r")]
    return out


def test_the_same_script_answers_and_writes_the_same_with_the_function_on_and_off(
    api: Api, db: Database, clock: FrozenClock
) -> None:
    seed(api)
    on_tid, on_key = tenant(api, "On")
    off_tid, off_key = tenant(api, "Off")
    start = clock.at
    with fast(True) as on_seen:
        on = script(api, clock, on_key)
    clock.at = start
    with fast(False) as off_seen:
        off = script(api, clock, off_key)
    kinds = [a["__typename"] for a in on]
    for expected in ("Charged", "IdempotencyConflict", "LimitExceeded", "QuotaExceeded", "NotEntitled"):
        assert expected in kinds, kinds
    assert [i for i, a in enumerate(on) if a.get("replayed")] == [2, 16], on
    assert normalized(on) == normalized(off)
    assert rows(db, on_tid) == rows(db, off_tid)
    assert off_seen == {}  # off: the function is never asked
    if db.backend == "postgres":
        # The common charges, replays and refusals were the function's; the rest fell back.
        assert on_seen["charged"] >= 7 and on_seen["replay"] == 2 and on_seen["conflict"] == 1, on_seen
        for outcome in ("per_call", "quota", "not_entitled", "unknown", "retired", "not_entitled_connection"):
            assert on_seen[outcome] == 1, (outcome, on_seen)
        assert on_seen["per_minute"] == 1 and on_seen["fallback"] >= 2, on_seen
    else:
        assert on_seen == {}  # SQLite: no function, the full path


@contextmanager
def traced_work(db: Database) -> Iterator[tuple[Any, list[int]]]:
    """A metered edge's transaction (connection_of_work, as REST and GraphQL run it): yields the
    connection and a one-item list that holds, after the block, its round trips on PostgreSQL
    (each ReadyForQuery the server sends ends one; the commit and the pool's reset included), or -1
    on SQLite."""
    import psycopg

    trips = [-1]
    with tempfile.TemporaryFile("w+") as f:
        with connection_of_work(db.engine) as conn:
            raw: Any = conn.connection.driver_connection
            if db.backend == "postgres":
                raw.pgconn.trace(f.fileno())
                raw.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
            yield conn, trips
        if db.backend == "postgres":
            raw.pgconn.untrace()
            f.seek(0)
            trips[0] = sum(1 for line in f.read().splitlines() if line.startswith("B") and "ReadyForQuery" in line)


def service_charge(
    db: Database, clock: FrozenClock, tid: str, ik: str, *, precheck: bool = False, **extra: Any
) -> tuple[Any, int]:
    """One charge through the metered edge's transaction, and its round trips on PostgreSQL."""
    req = types.MeterRequest(primitive=extra.pop("primitive", "email.send"), idempotency_key=ik, **extra)
    with traced_work(db) as (conn, trips):
        try:
            res: Any = charging.charge(
                conn, clock, TenantScope(tid), req, negative_buffer=0, precheck=precheck, alone=True
            )
        except DomainError as exc:
            res = exc
    return res, trips[0]


def test_a_warm_common_charge_is_one_round_trip(api: Api, db: Database, clock: FrozenClock) -> None:
    seed(api)
    tid, key = tenant(api, "Warm")
    assert charge(api, key, "first")["__typename"] == "Charged"  # records the period: warm from here
    with fast(True) as seen:
        res, trips = service_charge(db, clock, tid, "warm-1")
        replay, replay_trips = service_charge(db, clock, tid, "warm-1")
    assert isinstance(res, types.Charged) and res.credits_used == 1_000_000 and res.usage.used == 2
    assert isinstance(replay, types.Charged) and replay.replayed and replay.event_id == res.event_id
    if db.backend != "postgres":
        assert seen == {}
        return
    assert seen == {"charged": 1, "replay": 1}
    assert trips == 1 and replay_trips == 1  # no BEGIN, no COMMIT: the function's one statement
    with fast(False):
        _, full = service_charge(db, clock, tid, "warm-2")
    assert full >= 10, full  # today's path, for contrast
    with db.engine.connect() as c:  # the connection handed back is idle, nothing left open
        open_ = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in%'"
        assert c.execute(text(open_)).scalar() == 0


def _expired_hold(api: Api, clock: FrozenClock, tid: str, key: str) -> None:
    body = {"primitive": "email.send", "idempotencyKey": "h"}
    assert api(RESERVE_TTL, {"i": body, "ttl": 1}, key=key)["reserve"]["__typename"] == "Hold"
    clock.advance(seconds=5)


def _budget(api: Api, clock: FrozenClock, tid: str, key: str) -> str:
    made = api(NEW_KEY, {"t": tid})["createApiKey"]
    assert api(BUDGET, {"k": made["apiKey"]["id"], "i": {"creditLimit": "100"}})["setKeyBudget"]["__typename"]
    return str(made["secret"])


def _expired_bucket(api: Api, clock: FrozenClock, tid: str, key: str) -> None:
    until = clock.at.replace(second=30).isoformat()
    assert api(GRANT, {"t": tid, "a": "3", "k": "g", "e": until})["grantCredits"]["__typename"]
    clock.advance(minutes=1)


def _low_balance(api: Api, clock: FrozenClock, tid: str, key: str) -> None:
    assert api(POLICY, {"t": tid, "q": [50, 75, 90, 100], "l": "68.5"})["setAlertPolicy"]["__typename"] == "AlertPolicy"


def _spend_all(api: Api, clock: FrozenClock, tid: str, key: str) -> None:
    assert charge(api, key, "all", "cards.mid")["__typename"] == "Charged"


# name -> (setup before the charge (may return another key to charge with), the charge's input)
UNCOMMON: dict[str, tuple[Any, dict[str, Any]]] = {
    "no recorded period yet": (None, {}),
    "an open hold past its expiry": (_expired_hold, {}),
    "a price that is not fixed": (None, {"primitive": "browser.session.time", "elapsed_seconds": 30}),
    "a quota threshold crossed": (None, {"primitive": "search.web", "quantity": 2}),
    "a low-balance alert": (_low_balance, {}),
    "a key with a budget": (_budget, {}),
    "insufficient credits": (None, {"primitive": "cards.big", "reference": "r"}),
    "precheck at zero": (_spend_all, {}),
    "a bucket that ran out": (_expired_bucket, {}),
}


@pytest.mark.parametrize("case", list(UNCOMMON))
def test_each_uncommon_case_falls_back_with_the_same_answer(
    api: Api, db: Database, clock: FrozenClock, case: str
) -> None:
    setup, body = UNCOMMON[case]
    seed(api)
    answers, written = [], []
    start = clock.at
    for on in (True, False):
        clock.at = start
        tid, key = tenant(api, f"T{on}")
        if case != "no recorded period yet":
            assert charge(api, key, "warm")["__typename"] == "Charged"
        other = setup(api, clock, tid, key) if setup else None
        use = other if isinstance(other, str) else key
        before = count_rows(db.engine, *WRITTEN)
        if db.backend == "postgres" and on:
            # The function alone: it answers 'fallback' and writes nothing.
            with db.engine.connect() as c:
                raw: Any = c.connection.driver_connection
                raw.autocommit = True
                req = types.MeterRequest(
                    primitive=body.get("primitive", "email.send"),
                    idempotency_key="probe",
                    quantity=body.get("quantity", 1),
                    reference=body.get("reference"),
                    elapsed_seconds=body.get("elapsed_seconds"),
                    api_key_id=_key_id(db, use),
                )
                floor = -10_000_000  # the GraphQL edge's negative buffer (settings: 10 credits)
                out = raw.execute(
                    pg_charge._CALL,
                    (
                        tid,
                        "probe",
                        req.fingerprint(),
                        req.primitive,
                        req.quantity,
                        req.reference,
                        None,
                        req.api_key_id,
                        clock.now(),
                        floor,
                        case == "precheck at zero",
                    ),
                ).fetchone()
                raw.autocommit = False
            assert out[0] == "fallback", (case, out)
            assert count_rows(db.engine, *WRITTEN) == before
        with fast(on) as seen:
            if case in ("precheck at zero", "a price that is not fixed"):  # the edge's transaction, as REST
                res, _ = service_charge(db, clock, tid, "x", precheck=case == "precheck at zero", **body)
                answers.append({"type": type(res).__name__, **{k: v for k, v in vars(res).items() if k != "tenant_id"}})
            else:
                answers.append(charge(api, use, "x", **body))
        if db.backend == "postgres" and on:
            assert seen == {"fallback": 1}, (case, seen)
        written.append(rows(db, tid))
    assert normalized(answers[:1]) == normalized(answers[1:]), case
    assert written[0] == written[1], case


def _key_id(db: Database, secret: str) -> str | None:
    from app.core.auth import hash_key

    with db.engine.connect() as c:
        row = c.execute(text("SELECT id FROM api_key WHERE key_hash = :h"), {"h": hash_key(secret)}).first()
    return row[0] if row else None


def test_a_charge_inside_a_larger_unit_of_work_rolls_back_with_it(api: Api, db: Database, clock: FrozenClock) -> None:
    """Only a caller whose whole unit of work is the charge (alone=True) gets the self-committing
    function: any other charge commits with the caller's work, or not at all."""
    seed(api)
    tid, key = tenant(api, "Atomic")
    assert charge(api, key, "first")["__typename"] == "Charged"  # warm: the function would take it
    before = count_rows(db.engine, "usage_event")["usage_event"]
    req = types.MeterRequest(primitive="email.send", idempotency_key="inside")
    with fast(True) as seen, pytest.raises(RuntimeError), connection_of_work(db.engine) as conn:
        res = charging.charge(conn, clock, TenantScope(tid), req, negative_buffer=0)
        assert isinstance(res, types.Charged)
        raise RuntimeError("the work after the charge failed")
    assert seen == {}  # the function was not asked
    assert count_rows(db.engine, "usage_event")["usage_event"] == before


def test_a_database_without_the_function_charges_on_the_full_path(api: Api, db: Database, clock: FrozenClock) -> None:
    """Not migrated to 0012 (the function missing): the charge answers as ever, and the engine is
    remembered so the function is not asked again."""
    seed(api)
    tid, key = tenant(api, "Unmigrated")
    assert charge(api, key, "first")["__typename"] == "Charged"
    if db.backend == "postgres":
        with db.engine.begin() as c:
            c.execute(text("DROP FUNCTION meterkit_charge_batch"))
            c.execute(text("DROP FUNCTION meterkit_charge"))
    try:
        with fast(True) as seen:
            first, _ = service_charge(db, clock, tid, "after-drop-1")
            second, _ = service_charge(db, clock, tid, "after-drop-2")
        assert isinstance(first, types.Charged) and isinstance(second, types.Charged)
        assert second.usage.used == 3 and seen == {}
        assert (db.engine in pg_charge._MISSING) == (db.backend == "postgres")
    finally:
        pg_charge._MISSING.discard(db.engine)


def _frozen(migration: str, name: str) -> str:
    path = ROOT / "migrations" / "versions" / f"{migration}.py"
    spec = importlib.util.spec_from_file_location(f"meterkit_migration_{migration}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(getattr(module, name))


@pytest.mark.parametrize(
    ("function", "migration", "constant"),
    [
        ("meterkit_charge", "0021_plan_versions", "CHARGE_FUNCTION"),
        ("meterkit_charge_batch", "0021_plan_versions", "BATCH_FUNCTION"),
    ],
)
def test_the_functions_sql_files_are_what_the_newest_migrations_install(
    function: str, migration: str, constant: str
) -> None:
    """The .sql beside pg_charge.py is the function the code calls; the migration that installs it
    keeps its own frozen copy. A change to the file without a migration copying it fails here."""
    text_ = pg_charge.function_sql(function)
    body = "\n".join(line for line in text_.splitlines() if not line.startswith("-- ")).strip()
    assert body == _frozen(migration, constant).strip()
