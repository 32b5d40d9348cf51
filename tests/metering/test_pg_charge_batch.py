"""PostgreSQL's one-round-trip chargeBatch (meterkit_charge_batch, migration 0015_pg_charge_batch_once):
a warm common batch is one statement on the wire, one uncommon item sends the whole batch down the
full path with nothing written by the function, and scripted batches answer and write exactly as
the full Python path does. SQLite: the full path, with the same answers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from app.core.auth import TenantScope
from app.core.clock import FrozenClock
from app.core.errors import DomainError
from app.metering import charging, pg_charge, types
from tests.conftest import Api, Database, count_rows
from tests.metering.test_pg_charge import POLICY, UPSERT, WRITTEN, charge, fast, rows, seed, tenant, traced_work

Item = tuple[str, str, str, dict[str, Any]]  # tenant, key, primitive, extra


def batch(db: Database, clock: FrozenClock, items: list[Item]) -> tuple[list[Any], int]:
    """One chargeBatch through the metered edge's transaction, and its round trips on PostgreSQL."""
    reqs = [(TenantScope(t), types.MeterRequest(primitive=p, idempotency_key=k, **extra)) for t, k, p, extra in items]
    with traced_work(db) as (conn, trips):
        out = charging.charge_batch(conn, clock, reqs, negative_buffer=0, alone=True)
    return out, trips[0]


def shown(out: list[Any], ids: dict[int, int]) -> list[tuple[Any, ...]]:
    """Answers comparable across tenants: event ids numbered in order of appearance."""
    shown_: list[tuple[Any, ...]] = []
    for r in out:
        if isinstance(r, DomainError):
            fields = sorted((k, v) for k, v in vars(r).items() if k != "tenant_id")
            shown_.append((type(r).__name__, r.code, str(r), repr(fields)))
        else:
            assert isinstance(r, types.Charged)
            n = ids.setdefault(r.event_id, len(ids))
            shown_.append(("Charged", n, r.credits_used, r.credits_remaining, repr(r.usage), r.replayed))
    return shown_


def prepare(api: Api) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    seed(api)
    bulk = {"key": "email.bulk", "name": "Bulk", "unit": "mail", "category": "email", "pricingRule": "fixed"}
    assert api(UPSERT, {"i": {**bulk, "credits": "0.1"}})["upsertPrimitive"]["__typename"] == "Primitive"
    pairs = ([], [])  # type: tuple[list[tuple[str, str]], list[tuple[str, str]]]
    for side, label in zip(pairs, ("On", "Off"), strict=True):
        for n in (1, 2):
            tid, key = tenant(api, f"{label}{n}")
            # Thresholds no charge here reaches: quota refusals without an alert (which falls back).
            assert api(POLICY, {"t": tid, "q": [1000]})["setAlertPolicy"]["__typename"] == "AlertPolicy"
            assert charge(api, key, "warm")["__typename"] == "Charged"  # records the period
            side.append((tid, key))
    return pairs


def script(x: str, y: str) -> list[list[Item]]:
    return [
        [
            (y, "a", "email.send", {"quantity": 2}),
            (x, "a", "email.send", {}),
            (x, "a", "email.send", {}),  # a replay of the item above, inside the batch
            (x, "a", "email.send", {"quantity": 3}),  # conflict with it
            (x, "b", "search.web", {"quantity": 3}),
            (x, "c", "search.web", {"quantity": 2}),  # quota exceeded mid-batch (3 + 2 > 4)
            (x, "d", "search.web", {"quantity": 1}),  # still fits: 4 of 4
            (x, "e", "browser.navigate", {}),  # not entitled
            (y, "f", "nope.thing", {}),  # unknown primitive
            (x, "g", "email.send", {"quantity": 6}),  # per-call limit
            (y, "h", "email.send", {"connection": "gmail", "reference": "r-1"}),
            (y, "i", "email.bulk", {"quantity": 7}),
        ],
        [
            (x, "a", "email.send", {}),  # a replay of a stored event
            (y, "a", "email.send", {"quantity": 1}),  # a conflict with a stored event
            *[(x, f"m{n}", "email.send", {}) for n in range(5)],  # 2 + 4 = 6 this minute, then the limit
            (x, "h", "email.send", {"connection": "slack"}),  # connection not in the kit
            (y, "b", "email.bulk", {}),
            (y, "b", "email.bulk", {}),
        ],
    ]


def test_the_same_batches_answer_and_write_the_same_with_the_function_on_and_off(
    api: Api, db: Database, clock: FrozenClock
) -> None:
    (on1, on2), (off1, off2) = prepare(api)
    start = clock.at
    answers: dict[bool, list[list[tuple[Any, ...]]]] = {}
    seen: dict[bool, dict[str, int]] = {}
    for on, (x, y) in ((True, (on1[0], on2[0])), (False, (off1[0], off2[0]))):
        clock.at = start
        ids: dict[int, int] = {}
        with fast(on) as seen[on]:
            answers[on] = []
            for items in script(x, y):
                out, _ = batch(db, clock, items)
                answers[on].append(shown(out, ids))
                clock.advance(seconds=1)
    assert answers[True] == answers[False]
    flat = [a for b in answers[True] for a in b]
    kinds = {a[0] for a in flat}
    assert {"Charged", "IdempotencyConflict", "QuotaExceeded", "NotEntitled", "LimitExceeded"} <= kinds, kinds
    assert "UnknownPrimitive" in kinds, kinds
    assert sum(1 for a in flat if a[0] == "Charged" and a[5]) == 3, flat  # replays: in the batch x2, stored x1
    assert rows(db, on1[0]) == rows(db, off1[0])
    assert rows(db, on2[0]) == rows(db, off2[0])
    assert seen[False] == {}
    if db.backend == "postgres":
        assert seen[True].get("batch") == 2 and "batch_fallback" not in seen[True], seen[True]
    else:
        assert seen[True] == {}


def test_a_warm_common_batch_of_50_is_one_round_trip(api: Api, db: Database, clock: FrozenClock) -> None:
    (a, b), _ = prepare(api)
    items: list[Item] = [((a, b)[n % 2][0], f"w{n}", "email.bulk", {}) for n in range(50)]
    with fast(True) as seen:
        out, trips = batch(db, clock, items)
    assert all(isinstance(r, types.Charged) and not r.replayed for r in out), out
    assert [r.credits_used for r in out] == [100_000] * 50
    # Each tenant's items see the balance fall item by item.
    for t in (0, 1):
        remaining = [r.credits_remaining for r in out[t::2]]
        assert remaining == sorted(remaining, reverse=True) and remaining[0] - remaining[-1] == 24 * 100_000
    if db.backend != "postgres":
        assert seen == {} and trips == -1
        return
    assert seen == {"batch": 1, "charged": 50}
    assert trips == 1
    with fast(False):
        _, full = batch(db, clock, [(a[0], f"x{n}", "email.bulk", {}) for n in range(50)])
    assert full > 3, full  # today's path, for contrast


def test_one_uncommon_item_sends_the_whole_batch_down_the_full_path(api: Api, db: Database, clock: FrozenClock) -> None:
    (on1, on2), (off1, off2) = prepare(api)
    outs = {}
    for on, (x, y) in ((True, (on1[0], on2[0])), (False, (off1[0], off2[0]))):
        items: list[Item] = [
            (x, "a", "email.bulk", {}),
            (y, "b", "email.bulk", {}),
            (y, "c", "cards.big", {}),  # past the balance: a refusal that lists packs (Python's)
            (x, "d", "email.bulk", {}),
        ]
        with fast(on) as seen:
            out, _ = batch(db, clock, items)
        outs[on] = shown(out, {})
        if on and db.backend == "postgres":
            assert seen == {"batch_fallback": 1}, seen  # no item answered by the function
        else:
            assert seen == {}, seen
    assert outs[True] == outs[False]
    assert [a[0] for a in outs[True]] == ["Charged", "Charged", "InsufficientCredits", "Charged"], outs[True]
    assert rows(db, on1[0]) == rows(db, off1[0]) and rows(db, on2[0]) == rows(db, off2[0])


GRANT_UNTIL = """mutation($t: ID!, $a: Credits!, $k: String!, $e: DateTime) {
  grantCredits(tenantId: $t, amount: $a, idempotencyKey: $k, expiresAt: $e) { __typename } }"""


def test_mixed_outcomes_in_one_batch_answer_and_write_as_python(api: Api, db: Database, clock: FrozenClock) -> None:
    """One batch, two tenants: a key refused then accepted then replayed then in conflict, the same
    key for another tenant, a free item (no ledger entry), quota and the per-minute limit running
    out mid-batch, a refusal between charges, and debits that burn two buckets in expiry order.
    Migration 0015 decides these by arithmetic on terms read once per tenant."""
    (on1, on2), (off1, off2) = prepare(api)
    free = {"key": "email.free", "name": "Free", "unit": "mail", "category": "email", "pricingRule": "fixed"}
    assert api(UPSERT, {"i": {**free, "credits": "0"}})["upsertPrimitive"]["__typename"] == "Primitive"
    for tid in (on1[0], off1[0]):  # a second bucket that expires first: burnt before the plan's
        until = (clock.at + timedelta(hours=6)).isoformat()
        assert api(GRANT_UNTIL, {"t": tid, "a": "3", "k": "g", "e": until})["grantCredits"]["__typename"]
    start = clock.at
    answers: dict[bool, list[tuple[Any, ...]]] = {}
    seen: dict[bool, dict[str, int]] = {}
    for on, (x, y) in ((True, (on1[0], on2[0])), (False, (off1[0], off2[0]))):
        clock.at = start
        items: list[Item] = [
            (x, "k1", "email.send", {"quantity": 6}),  # per-call limit: refused, writes nothing
            (x, "k1", "email.send", {"quantity": 2}),  # the same key, accepted now
            (y, "k1", "email.send", {"quantity": 1}),  # the same key for another tenant: its own
            (x, "k1", "email.send", {"quantity": 2}),  # a replay of the accepted one
            (x, "k1", "email.send", {"quantity": 1}),  # a conflict with it
            (x, "z", "email.free", {}),  # free: charged, no ledger entry
            (x, "s1", "search.web", {"quantity": 3}),
            (x, "bad", "nope.thing", {}),  # a refusal between charges
            (x, "s2", "search.web", {"quantity": 2}),  # quota runs out mid-batch (3 + 2 > 4)
            (x, "s3", "search.web", {"quantity": 1}),  # still fits: 4 of 4
            *[(x, f"m{n}", "email.send", {}) for n in range(5)],  # warm + k1 + 4 = 6 this minute, then the limit
            (y, "g", "email.bulk", {"quantity": 3}),
            (x, "c", "email.send", {"connection": "gmail"}),  # the per-minute limit still holds
        ]
        with fast(on) as seen[on]:
            out, trips = batch(db, clock, items)
        answers[on] = shown(out, {})
        if on and db.backend == "postgres":
            assert trips == 1, trips
    assert answers[True] == answers[False]
    kinds = [a[0] for a in answers[True]]
    assert kinds == [
        "LimitExceeded", "Charged", "Charged", "Charged", "IdempotencyConflict", "Charged", "Charged",
        "UnknownPrimitive", "QuotaExceeded", "Charged", "Charged", "Charged", "Charged", "Charged",
        "LimitExceeded", "Charged", "LimitExceeded",
    ], kinds  # fmt: skip
    assert [a[5] for a in answers[True] if a[0] == "Charged"] == [False, False, True] + [False] * 8
    assert answers[True][3][1] == answers[True][1][1]  # the replay answers the accepted item's event
    assert rows(db, on1[0]) == rows(db, off1[0])
    assert rows(db, on2[0]) == rows(db, off2[0])
    buckets = rows(db, on1[0])["buckets"]
    assert sorted(b[2] for b in buckets)[0] == 0, buckets  # the grant that expires first is spent
    assert seen[False] == {}
    if db.backend == "postgres":
        assert seen[True].get("batch") == 1 and "batch_fallback" not in seen[True], seen[True]
    else:
        assert seen[True] == {}


def _crossing(api: Api, clock: FrozenClock, tid: str) -> None:
    assert api(POLICY, {"t": tid, "q": [50]})["setAlertPolicy"]["__typename"] == "AlertPolicy"


def _low(api: Api, clock: FrozenClock, tid: str) -> None:
    assert api(POLICY, {"t": tid, "q": [1000], "l": "67.5"})["setAlertPolicy"]["__typename"] == "AlertPolicy"


def _run_out(api: Api, clock: FrozenClock, tid: str) -> None:
    until = clock.at.replace(second=30).isoformat()
    assert api(GRANT_UNTIL, {"t": tid, "a": "3", "k": "g", "e": until})["grantCredits"]["__typename"]
    clock.advance(minutes=1)


# name -> (setup of the first tenant, the item put in the middle of the batch)
FALLBACKS: dict[str, tuple[Any, tuple[str, dict[str, Any]]]] = {
    "insufficient credits mid-batch": (None, ("cards.big", {})),
    "a quota threshold crossed mid-batch": (_crossing, ("search.web", {"quantity": 2})),
    "a low-balance alert mid-batch": (_low, ("email.send", {"quantity": 2})),
    "a price that is not fixed": (None, ("browser.session.time", {"elapsed_seconds": 30})),
    "a bucket that ran out": (_run_out, ("email.bulk", {})),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_a_fallback_batch_writes_nothing_and_python_answers_the_same(
    api: Api, db: Database, clock: FrozenClock, case: str
) -> None:
    setup, (primitive, extra) = FALLBACKS[case]
    (on1, on2), (off1, off2) = prepare(api)
    start = clock.at
    outs = {}
    for on, (x, y) in ((True, (on1[0], on2[0])), (False, (off1[0], off2[0]))):
        clock.at = start
        if setup:
            setup(api, clock, x)
        items: list[Item] = [
            (x, "a", "email.bulk", {}),
            (y, "b", "email.bulk", {}),
            (x, "a", "email.bulk", {}),  # a replay inside the batch, before the uncommon item
            (x, "c", primitive, extra),
            (x, "d", "email.bulk", {}),
        ]
        if on and db.backend == "postgres":
            # The function alone: it answers 'fallback' and has written nothing for either tenant.
            before = (rows(db, x), rows(db, y), count_rows(db.engine, *WRITTEN))
            reqs = [(TenantScope(t), types.MeterRequest(primitive=p, idempotency_key=k, **e)) for t, k, p, e in items]
            order = sorted(range(len(reqs)), key=lambda i: reqs[i][0].tenant_id)
            cols = [list(col) for col in zip(*(pg_charge._item(*reqs[i]) for i in order), strict=True)]
            with db.engine.connect() as c:
                raw: Any = c.connection.driver_connection
                raw.autocommit = True
                got = raw.execute(pg_charge._CALL_BATCH, (*cols, clock.now(), 0)).fetchone()
                raw.autocommit = False
            assert list(got) == [["fallback"], None, None, None, None, None, None, None], (case, got)
            assert (rows(db, x), rows(db, y), count_rows(db.engine, *WRITTEN)) == before, case
        with fast(on) as seen:
            out, _ = batch(db, clock, items)
        outs[on] = shown(out, {})
        if on and db.backend == "postgres":
            assert seen == {"batch_fallback": 1}, (case, seen)
        else:
            assert seen == {}, (case, seen)
    assert outs[True] == outs[False], case
    assert outs[True][2][5] is True, outs[True]  # the in-batch replay
    assert rows(db, on1[0]) == rows(db, off1[0]), case
    assert rows(db, on2[0]) == rows(db, off2[0]), case
