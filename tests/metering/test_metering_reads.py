"""Reads and counts: constant SQL statements per page, usage from counters, holds expiring,
chargeBatch, check."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import event, text

from app.core.clock import FrozenClock
from app.core.db import held_driver
from tests.conftest import Api, count_rows
from tests.fixtures_catalog import SET_SUB, seed_catalog
from tests.metering.test_metering_basic import CHARGE, CREDITS, RESERVE, SETTLE
from tests.paths import ROOT


@contextmanager
def counting(engine: Any) -> Iterator[list[str]]:
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "PRAGMA", "SAVEPOINT", "RELEASE")):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


PAGE = """query($n: Int!) { tenants(first: $n) { nodes { id plan { key quotas { quota } } accountKit { key }
  subscription { status } credits { balance available } usage { plan quotas { primitive used remaining } } } } }"""


def _tenants(api: Api, n: int) -> list[str]:
    ids = []
    for i in range(n):
        tid = api.create_tenant(f"T{i}")
        api(SET_SUB, {"t": tid, "i": {"planKey": "pro" if i % 2 else "free"}})
        ids.append(tid)
    return ids


def test_tenants_page_constant_statements(api: Api) -> None:
    seed_catalog(api)
    ids = _tenants(api, 12)
    key = api.tenant_key(ids[1])
    api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "x"}}, key=key)
    with counting(api.db.engine) as small:
        page2 = api(PAGE, {"n": 2})
    with counting(api.db.engine) as large:
        page12 = api(PAGE, {"n": 12})
    assert len(page2["tenants"]["nodes"]) == 2 and len(page12["tenants"]["nodes"]) == 12
    assert len(small) == len(large), (small, large)
    used = {n["id"]: n["usage"]["quotas"] for n in page12["tenants"]["nodes"]}
    assert {"primitive": "email.send", "used": 1, "remaining": 999} in used[ids[1]]


def test_usage_read_does_not_scan_events(api: Api) -> None:
    seed_catalog(api)
    tid = api.create_tenant("U")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    key = api.tenant_key(tid)
    q = "{ viewer { usage { quotas { primitive used } } } }"
    api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "u0"}}, key=key)
    with counting(api.db.engine) as few:
        api(q, key=key)
    for i in range(1, 40):
        api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": f"u{i}"}}, key=key)
    with counting(api.db.engine) as many:
        data = api(q, key=key)
    assert data["viewer"]["usage"]["quotas"][0] == {"primitive": "email.send", "used": 40}
    assert len(few) == len(many)
    assert not any("usage_event" in s for s in many)


def test_charge_statement_count(api: Api) -> None:
    """The hot path's cost in statements: asserted so a regression is seen (counts are not noisy)."""
    from tests.metering.test_usage_series import _driver_statements, _transaction  # it imports this module

    seed_catalog(api)
    tid = api.create_tenant("S")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    key = api.tenant_key(tid)
    api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "warm"}}, key=key)
    if api.db.backend != "sqlite":
        return  # the driver trace is SQLite's (PostgreSQL reads the facts in a second statement)
    with _driver_statements(api) as seen:
        api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "s1"}}, key=key)
    charge = _transaction(seen)
    # One read (lock, terms, stored key, quota row, first live bucket), then the writes: bucket, ledger
    # entry, account, event, counter, rollup, rate window (this kit limits calls per minute). No sweep,
    # no separate key lookup or quota read.
    assert len(charge) == 8, "\n".join(charge)
    assert sum(s.startswith("SELECT") for s in charge) == 1, "\n".join(charge)


def test_a_free_charge_writes_no_account_row_and_a_free_charge_after_an_expiry_still_does(
    api: Api, clock: FrozenClock
) -> None:
    """A free call (browser.session.open costs 0) moves no credits: no bucket, no ledger entry and no
    account UPDATE (it would only touch updated_at). After a bucket expired, the same free call's
    sweep moves the balance and the account is written, so the stored balance stays exact."""
    from tests.credits.test_credits_graphql import CREDITS as TENANT_CREDITS
    from tests.credits.test_credits_graphql import GRANT
    from tests.metering.test_usage_series import _driver_statements, _transaction

    seed_catalog(api)
    tid = api.create_tenant("F")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    key = api.tenant_key(tid)
    free = {"primitive": "browser.session.open", "idempotencyKey": "f0"}
    first = api(CHARGE, {"i": free}, key=key)["charge"]
    assert (first["__typename"], first["creditsUsed"]) == ("Charged", "0")
    before = api(CREDITS, key=key)["status"]["credits"]
    entries = count_rows(api.db.engine, "ledger_entry")["ledger_entry"]
    if api.db.backend == "sqlite":
        with _driver_statements(api) as seen:
            api(CHARGE, {"i": {**free, "idempotencyKey": "f1"}}, key=key)
        charge = _transaction(seen)
        assert not any("credit_account" in s and s.startswith("UPDATE") for s in charge), "\n".join(charge)
        assert not any("credit_bucket" in s and s.startswith("UPDATE") for s in charge), "\n".join(charge)
        # The read, then event, counter and rollup.
        assert len(charge) == 4, "\n".join(charge)
    else:
        api(CHARGE, {"i": {**free, "idempotencyKey": "f1"}}, key=key)
    assert api(CREDITS, key=key)["status"]["credits"] == before
    assert count_rows(api.db.engine, "ledger_entry")["ledger_entry"] == entries
    # A bucket that expires: the next free charge sweeps it (an expiry entry) and writes the balance.
    soon = (clock.now() + timedelta(seconds=60)).isoformat()
    api(GRANT, {"t": tid, "a": "7", "k": "soon", "e": soon})
    assert api(CREDITS, key=key)["status"]["credits"]["balance"] == str(int(before["balance"]) + 7)
    clock.advance(seconds=61)
    done = api(CHARGE, {"i": {**free, "idempotencyKey": "f2"}}, key=key)["charge"]
    assert done["creditsRemaining"] == before["available"]
    with api.db.engine.connect() as c:
        stored = c.execute(text("SELECT balance FROM credit_account WHERE tenant_id = :t"), {"t": tid}).scalar_one()
    assert str(stored // 1_000_000) == before["balance"]  # the sweep is in the account row, not only answered
    assert api(TENANT_CREDITS, {"id": tid})["tenant"]["credits"]["balance"] == before["balance"]


def test_hold_expires_once(api: Api, clock: FrozenClock) -> None:
    seed_catalog(api)
    tid = api.create_tenant("H")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    key = api.tenant_key(tid)
    hold = api(RESERVE, {"i": {"primitive": "research.thorough", "idempotencyKey": "h1"}}, key=key)["reserve"]
    assert api(CREDITS, key=key)["status"]["credits"]["reserved"] == "5"
    clock.advance(seconds=3600)  # the default TTL: expired exactly at the boundary
    check = api('{ check(primitive: "research.thorough") { ... on CheckResult { availableCredits } } }', key=key)
    assert check["check"]["availableCredits"] == "220"  # exact at read time, before any sweep
    api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "after"}}, key=key)  # a write sweeps it
    credits = api(CREDITS, key=key)["status"]["credits"]
    assert credits["reserved"] == "0" and credits["balance"] == "219"
    late = api(SETTLE, {"h": hold["id"]}, key=key)["settle"]
    assert late == {"__typename": "HoldClosed", "status": "expired"}
    assert api(CREDITS, key=key)["status"]["credits"]["balance"] == "219"


BATCH = """mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename
  ... on Charged { eventId replayed } ... on NotEntitled { primitive } ... on ValidationError { field } } }"""


def test_charge_batch_items_have_own_results(api: Api) -> None:
    seed_catalog(api)
    a, b = api.create_tenant("A"), api.create_tenant("B")
    for t in (a, b):
        api(SET_SUB, {"t": t, "i": {"planKey": "pro"}})
    items = [
        {"tenantId": b, "item": {"primitive": "email.send", "idempotencyKey": "1"}},
        {"tenantId": a, "item": {"primitive": "email.send", "idempotencyKey": "1"}},
        {"tenantId": a, "item": {"primitive": "video.generate", "idempotencyKey": "2"}},
        {"tenantId": a, "item": {"primitive": "email.send", "idempotencyKey": "1"}},
        {"tenantId": a, "item": {"primitive": "nope", "idempotencyKey": "3"}},
    ]
    res = api(BATCH, {"items": items})["chargeBatch"]
    assert [r["__typename"] for r in res] == ["Charged", "Charged", "NotEntitled", "Charged", "ValidationError"]
    assert res[3]["replayed"] is True and res[3]["eventId"] == res[1]["eventId"]
    assert count_rows(api.db.engine, "usage_event")["usage_event"] == 2
    # A tenant key cannot charge another tenant in a batch: the answer is the missing-tenant one.
    key_a = api.tenant_key(a)
    other = api(
        BATCH, {"items": [{"tenantId": b, "item": {"primitive": "email.send", "idempotencyKey": "9"}}]}, key=key_a
    )["chargeBatch"]
    assert other[0]["__typename"] == "NotFoundError"


def test_check_answers_without_writing(api: Api) -> None:
    seed_catalog(api)
    tid = api.create_tenant("C")
    api(SET_SUB, {"t": tid, "i": {"planKey": "free"}})
    key = api.tenant_key(tid)
    before = count_rows(api.db.engine, "ledger_entry", "usage_event", "usage_counter", "credit_hold")
    q = """query($p: String, $c: String) { check(primitive: $p, connection: $c) { __typename
      ... on CheckResult { allowed reason quota remaining availableCredits price } } }"""
    ok = api(q, {"p": "email.send"}, key=key)["check"]
    assert ok["allowed"] is True and ok["price"] == "1" and ok["remaining"] == 100 and ok["availableCredits"] == "20"
    no = api(q, {"p": "browser.act"}, key=key)["check"]
    assert no["allowed"] is False and no["reason"] == "NOT_ENTITLED"
    conn = api(q, {"c": "slack"}, key=key)["check"]
    assert conn["allowed"] is False and conn["reason"] == "NOT_ENTITLED"
    assert count_rows(api.db.engine, "ledger_entry", "usage_event", "usage_counter", "credit_hold") == before
    _ = timedelta


def test_batch_equals_one_by_one(api: Api) -> None:
    """A batch decides exactly as the same charges sent one at a time: refusals, replays,
    conflicts, quota, floor; and leaves the same balance, ledger and counters."""
    from sqlalchemy import text

    from tests.fixtures_catalog import KIT, PLAN

    api(KIT, {"i": {"key": "kit_b", "name": "B", "allowedPrimitives": ["email.send", "search.web", "url.read"]}})
    api(
        PLAN,
        {
            "i": {
                "key": "plan_b",
                "name": "B",
                "accountKitId": "kit_b",
                "period": "month",
                "quotas": [{"primitive": "email.send", "quota": 6}],
            }
        },
    )
    twins = [api.create_tenant("batch"), api.create_tenant("single")]
    for t in twins:
        api(SET_SUB, {"t": t, "i": {"planKey": "plan_b"}})
    items: list[dict[str, Any]] = [{"primitive": "email.send", "idempotencyKey": "pre"}]  # charged before: a replay
    for i in range(60):
        items.append(
            {
                "primitive": ["email.send", "search.web", "url.read"][i % 3],
                "idempotencyKey": f"k{i}",
                "quantity": 1 + i % 2,
            }
        )
    items += [
        {"primitive": "search.web", "idempotencyKey": "k1", "quantity": 2},  # same key, same params
        {"primitive": "search.web", "idempotencyKey": "k1", "quantity": 1},  # same key, other params
        {"primitive": "browser.act", "idempotencyKey": "nope"},
    ]
    single_key = api.tenant_key(twins[1])
    one_by_one = []
    for t in twins:
        api(CHARGE, {"i": items[0]}, key=api.tenant_key(t))
    for it in items:
        one_by_one.append(api(CHARGE, {"i": it}, key=single_key)["charge"])
    batch = api(
        """mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename
      ... on Charged { replayed creditsRemaining } } }""",
        {"items": [{"tenantId": twins[0], "item": it} for it in items]},
    )["chargeBatch"]
    assert [b["__typename"] for b in batch] == [s["__typename"] for s in one_by_one]
    kinds = {b["__typename"] for b in batch}
    assert {"Charged", "QuotaExceeded", "InsufficientCredits", "IdempotencyConflict", "NotEntitled"} <= kinds
    assert [b.get("replayed") for b in batch] == [s.get("replayed") for s in one_by_one]
    assert [b.get("creditsRemaining") for b in batch] == [s.get("creditsRemaining") for s in one_by_one]
    with api.db.engine.connect() as c:
        state = []
        for t in twins:
            state.append(
                (
                    c.execute(text("SELECT balance FROM credit_account WHERE tenant_id = :t"), {"t": t}).scalar_one(),
                    c.execute(text("SELECT sum(amount) FROM ledger_entry WHERE tenant_id = :t"), {"t": t}).scalar_one(),
                    sorted(
                        c.execute(
                            text("SELECT primitive, used FROM usage_counter WHERE tenant_id = :t"), {"t": t}
                        ).all()
                    ),
                    sorted(c.execute(text("SELECT remaining FROM credit_bucket WHERE tenant_id = :t"), {"t": t}).all()),
                )
            )
    assert state[0] == state[1]
    assert state[0][0] == state[0][1]


def test_check_lists_the_packs_when_credits_are_insufficient(api: Api) -> None:
    """As charge's InsufficientCredits does: the shortfall and the packs that cover it, each with
    its purchasePath (issue 8, point 5)."""
    seed_catalog(api)
    tid = api.create_tenant("Poor")
    api(SET_SUB, {"t": tid, "i": {"planKey": "free"}})  # no monthly credits: only the 20 signup credits
    key = api.tenant_key(tid)
    q = """query($p: String!, $n: Int! = 1) { check(primitive: $p, quantity: $n) { __typename ... on CheckResult {
      allowed reason price availableCredits shortfall packs { key credits priceUsd purchasePath } } } }"""
    ok = api(q, {"p": "search.web", "n": 3}, key=key)["check"]
    assert ok["allowed"] is True and ok["shortfall"] is None and ok["packs"] == []
    # Spend the 20 signup credits down to 2: a 3-credit job is refused, 1 credit short.
    for i in range(18):
        api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": f"e{i}"}}, key=key)
    before = count_rows(api.db.engine, "ledger_entry", "usage_event", "usage_counter", "credit_hold")
    no = api(q, {"p": "search.web", "n": 3}, key=key)["check"]
    assert no["allowed"] is False and no["reason"] == "INSUFFICIENT_CREDITS", no
    assert no["availableCredits"] == "2" and no["price"] == "3" and no["shortfall"] == "1", no
    packs = api("{ creditPacks { key } }", key=key)["creditPacks"]
    assert [p["key"] for p in no["packs"]] == [p["key"] for p in packs], no  # every pack covers 1 credit
    assert no["packs"] and all(f'purchaseCreditPack(pack: "{p["key"]}")' in p["purchasePath"] for p in no["packs"])
    assert count_rows(api.db.engine, "ledger_entry", "usage_event", "usage_counter", "credit_hold") == before
    charged = api(
        """mutation { charge(input: {primitive: "search.web", quantity: 3, idempotencyKey: "big"}) { __typename
          ... on Charged { creditsUsed } } }""",
        key=key,
    )["charge"]
    assert charged["__typename"] == "Charged"  # charge is for work done: it may dip into the buffer
    # At -1, any new work is refused, and the shortfall counts the debt.
    broke = api(q, {"p": "email.send"}, key=key)["check"]
    assert broke["reason"] == "INSUFFICIENT_CREDITS" and broke["shortfall"] == "2" and broke["packs"], broke


@contextmanager
def every_statement(engine: Any) -> Iterator[list[str]]:
    """Every statement the driver runs, SQLAlchemy's and the hot paths' plain SQL alike (which skips
    SQLAlchemy's events): SQLite's trace callback, or a counting psycopg cursor on PostgreSQL.
    Transaction control (BEGIN, COMMIT, ROLLBACK) and PRAGMAs are left out."""
    seen: list[str] = []

    def keep(statement: str) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA")):
            seen.append(statement)

    if engine.dialect.name == "sqlite":

        def on_checkout(dbapi_conn: Any, *_: Any) -> None:
            dbapi_conn.set_trace_callback(keep)

        def on_checkin(dbapi_conn: Any, *_: Any) -> None:
            dbapi_conn.set_trace_callback(None)

    else:
        import psycopg

        class Counting(psycopg.Cursor):  # type: ignore[type-arg]
            def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
                keep(str(query))
                return super().execute(query, params, **kw)

        def on_checkout(dbapi_conn: Any, *_: Any) -> None:
            dbapi_conn.cursor_factory = Counting

        def on_checkin(dbapi_conn: Any, *_: Any) -> None:
            dbapi_conn.cursor_factory = psycopg.Cursor

    event.listen(engine, "checkout", on_checkout)
    event.listen(engine, "checkin", on_checkin)
    held = held_driver(engine)  # SQLite's writers' connection, checked out once (app/core/db.py)
    if held is not None:
        on_checkout(held)
    try:
        yield seen
    finally:
        event.remove(engine, "checkout", on_checkout)
        event.remove(engine, "checkin", on_checkin)
        held = held_driver(engine)
        if held is not None:
            on_checkin(held)


CHECK_USED = """query($p: String!) { check(primitive: $p) { __typename ... on CheckResult {
  allowed reason used quota remaining availableCredits price } } }"""


def test_check_is_one_statement_and_reads_the_period_a_charge_would_count(api: Api, clock: FrozenClock) -> None:
    """The read-only check costs one statement when a recorded period holds now (the common case),
    three when none does yet (the predicted period, then its count), and answers what the charge
    answers: the same count, quota and available credits."""
    seed_catalog(api)
    tid = api.create_tenant("Checked")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    key = api.tenant_key(tid)
    charged = {}
    for i in range(3):
        charged = api(
            """mutation($i: MeterInput!) { charge(input: $i) { __typename ... on Charged {
              creditsRemaining usage { used quota remaining } } } }""",
            {"i": {"primitive": "email.send", "idempotencyKey": f"c{i}"}},
            key=key,
        )["charge"]
    assert charged["__typename"] == "Charged", charged

    def statements(query: str, variables: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        # The same key's `{ __typename }` is the baseline: what auth costs (its cache is off in tests).
        with every_statement(api.db.engine) as base:
            api("{ __typename }", key=key)
        with every_statement(api.db.engine) as seen:
            data = api(query, variables, key=key)
        return len(seen) - len(base), data

    n, data = statements(CHECK_USED, {"p": "email.send"})
    usage = charged["usage"]
    assert data["check"] == {
        "__typename": "CheckResult",
        "allowed": True,
        "reason": None,
        "used": usage["used"],
        "quota": usage["quota"],
        "remaining": usage["remaining"],
        "availableCredits": charged["creditsRemaining"],
        "price": "1",
    }
    assert usage["used"] == 3 and n == 1, n
    # A connection check reads the same one statement.
    n, data = statements('{ check(connection: "slack") { ... on CheckResult { allowed reason } } }')
    assert n == 1 and data["check"] == {"allowed": False, "reason": "NOT_ENTITLED"}
    # Past the recorded period, before a charge records the next one: nothing counted there yet.
    clock.advance(days=40)
    n, data = statements(CHECK_USED, {"p": "email.send"})
    assert n == 3 and data["check"]["used"] == 0 and data["check"]["remaining"] == 1000, (n, data)
    after = api(
        """mutation($i: MeterInput!) { charge(input: $i) { ... on Charged { usage { used remaining } } } }""",
        {"i": {"primitive": "email.send", "idempotencyKey": "next"}},
        key=key,
    )["charge"]
    n, data = statements(CHECK_USED, {"p": "email.send"})
    assert n == 1 and (data["check"]["used"], data["check"]["remaining"]) == (1, 999) == tuple(after["usage"].values())
    # An unknown primitive is the typed error it was, from the same statement.
    n, data = statements('{ check(primitive: "no.such") { __typename ... on ValidationError { code } } }')
    assert n == 1 and data["check"] == {"__typename": "ValidationError", "code": "UNKNOWN_PRIMITIVE"}, data


def test_sqlite_connections_checkpoint_as_the_bench_floor_does(api: Api) -> None:
    """Every pooled SQLite connection checkpoints at the interval the charge was measured with, and the
    bench's bare reference uses the same (its settings must stay meterkit's)."""

    from app.core.db import WAL_AUTOCHECKPOINT_PAGES

    if api.db.backend != "sqlite":
        return  # a SQLite setting
    with api.db.engine.connect() as c:
        pages = c.connection.driver_connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0]  # type: ignore[union-attr]
        mode = c.connection.driver_connection.execute("PRAGMA journal_mode").fetchone()[0]  # type: ignore[union-attr]
    assert (pages, mode) == (WAL_AUTOCHECKPOINT_PAGES, "wal")
    floor = (ROOT / "bench" / "floor_app.py").read_text()
    assert f"wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}" in floor
