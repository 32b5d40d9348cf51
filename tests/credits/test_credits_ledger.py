"""The ledger itself on SQLite and PostgreSQL: append-only, balance == sum of entries after
every operation, burn order, expiry at the exact boundary, idempotent grants (also under
concurrency), reversals, plan allowances and reconciliation."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.account_kits.service import KitInput, upsert_account_kit
from app.core.auth import TenantScope
from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.core.money import MICRO
from app.credits import ledger, service
from app.credits.packs import list_packs, pack_by_key, pack_by_price, packs_covering
from app.plans.service import PlanInput, upsert_plan
from app.tenants.service import TenantInput, create_tenant
from tests.conftest import ALL_TABLES, Database, count_rows

T0 = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def new_tenant(db: Database, clock: FrozenClock, signup: int = 20 * MICRO) -> TenantScope:
    with unit_of_work(db.engine) as s:
        t = create_tenant(s, clock, TenantInput(name="Acme"), default_plan_key="free", signup_micro=signup)
    return TenantScope(t.id)


def balance(db: Database, scope: TenantScope, now: datetime) -> int:
    with unit_of_work(db.engine, write=False) as s:
        return ledger.available_now(s, [scope], now)[scope.tenant_id].balance


def assert_consistent(db: Database) -> None:
    """balance == sum(entries) == newest balance_after, and the bucket invariant, for every tenant."""
    with unit_of_work(db.engine, write=False) as s:
        report = service.reconcile(s)
    assert report.checked > 0
    assert report.drifted == [], report.drifted


def grant(db: Database, scope: TenantScope, clock: FrozenClock, amount: int, key: str, **kw: Any) -> str:
    with unit_of_work(db.engine) as s:
        bucket_id, _ = ledger.grant(s, scope, clock, amount=amount, source="adjustment", grant_key=key, **kw)
    assert_consistent(db)
    return bucket_id


def debit(db: Database, scope: TenantScope, clock: FrozenClock, amount: int, floor: int = 0) -> int:
    with unit_of_work(db.engine) as s:
        after = ledger.debit(s, scope, clock, amount=amount, action="email.send", floor=floor)
    assert_consistent(db)
    return after


def remaining(db: Database, scope: TenantScope) -> dict[str, int]:
    with db.engine.connect() as c:
        rows = c.execute(
            text("SELECT id, remaining FROM credit_bucket WHERE tenant_id = :t"), {"t": scope.tenant_id}
        ).all()
    return {r[0]: int(r[1]) for r in rows}


def test_a_new_tenant_has_the_signup_grant(db: Database, clock: FrozenClock) -> None:
    scope = new_tenant(db, clock)
    assert balance(db, scope, clock.now()) == 20 * MICRO
    with unit_of_work(db.engine, write=False) as s:
        summary = service.summaries(s, [scope.tenant_id], clock.now())[scope.tenant_id]
    assert [(b.source, b.granted, b.remaining, b.expires_at) for b in summary.buckets] == [
        ("signup", 20 * MICRO, 20 * MICRO, None)
    ]
    assert_consistent(db)


def test_a_read_sees_one_snapshot_even_when_a_grant_commits_between_its_statements(
    db: Database, clock: FrozenClock
) -> None:
    """A summary is two statements (the balance, then the buckets). A grant committed between
    them must not show up in the second only: that answered a state that never existed, and a
    live subscriber sent it (balance unchanged, a new bucket). PostgreSQL reads need REPEATABLE
    READ for this; SQLite's read transaction is one snapshot already."""
    scope = new_tenant(db, clock)
    now = clock.now()
    with unit_of_work(db.engine, write=False) as s:
        before = ledger.available_now(s, [scope], now)[scope.tenant_id]
        with unit_of_work(db.engine) as other:  # another connection, committed before we read on
            ledger.grant(other, scope, clock, amount=7 * MICRO, source="adjustment", grant_key="between")
        buckets = service.live_buckets(s, [scope.tenant_id], now)[scope.tenant_id]
        again = ledger.available_now(s, [scope], now)[scope.tenant_id]
    assert before.balance == again.balance == 20 * MICRO
    assert sum(b.remaining for b in buckets) == before.balance
    assert [b.source for b in buckets] == ["signup"]
    # The next read sees the grant, whole.
    assert balance(db, scope, now) == 27 * MICRO
    assert_consistent(db)


@pytest.mark.parametrize("statement", ["UPDATE ledger_entry SET amount = amount + 1", "DELETE FROM ledger_entry"])
def test_the_database_refuses_to_change_ledger_entries(db: Database, clock: FrozenClock, statement: str) -> None:
    new_tenant(db, clock)
    before = count_rows(db.engine, "ledger_entry")
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as c:
        c.execute(text(statement))
    assert count_rows(db.engine, "ledger_entry") == before
    with db.engine.connect() as c:
        assert c.execute(text("SELECT sum(amount) FROM ledger_entry")).scalar_one() == 20 * MICRO
    assert_consistent(db)


def test_no_code_path_updates_or_deletes_ledger_entries() -> None:
    import inspect

    from app.graphql import credits as credits_graphql
    from app.graphql import ledger as ledger_graphql
    from app.pricing import service as pricing_service

    for module in (ledger, service, credits_graphql, ledger_graphql, pricing_service):
        src = inspect.getsource(module)
        assert "update(ENTRY" not in src and "delete(ENTRY" not in src, module.__name__


def test_burn_order_soonest_expiry_first_then_oldest(db: Database, clock: FrozenClock) -> None:
    scope = new_tenant(db, clock, signup=0)
    late = grant(db, scope, clock, 5 * MICRO, "late", expires_at=T0 + timedelta(days=20))
    clock.advance(seconds=1)
    never_old = grant(db, scope, clock, 5 * MICRO, "never-old")
    clock.advance(seconds=1)
    soon = grant(db, scope, clock, 5 * MICRO, "soon", expires_at=T0 + timedelta(days=2))
    clock.advance(seconds=1)
    never_new = grant(db, scope, clock, 5 * MICRO, "never-new")
    # 7 credits: all 5 of `soon`, then 2 of `late`.
    assert debit(db, scope, clock, 7 * MICRO) == 13 * MICRO
    assert remaining(db, scope) == {soon: 0, late: 3 * MICRO, never_old: 5 * MICRO, never_new: 5 * MICRO}
    # 6 more: the rest of `late`, then the oldest bucket without expiry.
    assert debit(db, scope, clock, 6 * MICRO) == 7 * MICRO
    assert remaining(db, scope) == {soon: 0, late: 0, never_old: 2 * MICRO, never_new: 5 * MICRO}


def test_an_expired_bucket_gives_nothing_from_its_expiry_instant(db: Database, clock: FrozenClock) -> None:
    scope = new_tenant(db, clock, signup=0)
    expiry = T0 + timedelta(hours=1)
    grant(db, scope, clock, 10 * MICRO, "promo", expires_at=expiry)
    grant(db, scope, clock, 1 * MICRO, "keep")
    clock.at = expiry - timedelta(microseconds=1)
    assert balance(db, scope, clock.now()) == 11 * MICRO
    clock.at = expiry
    # Exact at read time, before any write sweeps the bucket.
    assert balance(db, scope, clock.now()) == 1 * MICRO
    with pytest.raises(ledger.InsufficientFunds):
        debit(db, scope, clock, 2 * MICRO)
    assert debit(db, scope, clock, 1 * MICRO) == 0
    with db.engine.connect() as c:
        kinds = [r[0] for r in c.execute(text("SELECT kind FROM ledger_entry ORDER BY id"))]
    assert kinds == ["grant", "grant", "expiry", "debit"]
    assert_consistent(db)


def test_grant_while_in_debt_pays_the_debt_first(db: Database, clock: FrozenClock) -> None:
    scope = new_tenant(db, clock, signup=1 * MICRO)
    assert debit(db, scope, clock, 4 * MICRO, floor=-10 * MICRO) == -3 * MICRO
    bucket = grant(db, scope, clock, 5 * MICRO, "topup")
    assert balance(db, scope, clock.now()) == 2 * MICRO
    assert remaining(db, scope)[bucket] == 2 * MICRO


def test_operator_grant_is_idempotent_and_conflicts_on_a_different_grant(db: Database, clock: FrozenClock) -> None:
    scope = new_tenant(db, clock)
    with unit_of_work(db.engine) as s:
        first, created = service.grant_credits(s, scope, clock, amount=5 * MICRO, idempotency_key="k1", reason="sorry")
    assert created
    with unit_of_work(db.engine) as s:
        again, created = service.grant_credits(s, scope, clock, amount=5 * MICRO, idempotency_key="k1", reason="sorry")
    assert (again, created) == (first, False)
    before = count_rows(db.engine, *ALL_TABLES)
    with pytest.raises(Conflict), unit_of_work(db.engine) as s:
        service.grant_credits(s, scope, clock, amount=6 * MICRO, idempotency_key="k1")
    # An operator key never collides with the signup grant's key.
    with unit_of_work(db.engine) as s:
        _, created = service.grant_credits(s, scope, clock, amount=1 * MICRO, idempotency_key="signup")
    assert created
    assert count_rows(db.engine, *ALL_TABLES)["credit_bucket"] == before["credit_bucket"] + 1
    assert balance(db, scope, clock.now()) == 26 * MICRO
    assert_consistent(db)


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"amount": 0}, ValidationFailed),
        ({"amount": -5 * MICRO}, ValidationFailed),
        ({"amount": 2**63}, ValidationFailed),
        ({"amount": True}, ValidationFailed),
        ({"idempotency_key": ""}, ValidationFailed),
        ({"idempotency_key": "x" * 191}, ValidationFailed),
        ({"expires_at": T0}, ValidationFailed),
        ({"reason": " "}, ValidationFailed),
    ],
)
def test_bad_grants_write_nothing(db: Database, clock: FrozenClock, kw: dict[str, Any], error: type) -> None:
    scope = new_tenant(db, clock)
    args: dict[str, Any] = {"amount": MICRO, "idempotency_key": "k"} | kw
    before = count_rows(db.engine, *ALL_TABLES)
    with pytest.raises(error), unit_of_work(db.engine) as s:
        service.grant_credits(s, scope, clock, **args)
    assert count_rows(db.engine, *ALL_TABLES) == before


def test_grant_to_a_missing_tenant_is_not_found(db: Database, clock: FrozenClock) -> None:
    before = count_rows(db.engine, *ALL_TABLES)
    with pytest.raises(NotFound), unit_of_work(db.engine) as s:
        service.grant_credits(s, TenantScope("ten_" + "0" * 32), clock, amount=MICRO, idempotency_key="k")
    assert count_rows(db.engine, *ALL_TABLES) == before


def test_concurrent_grants_with_one_key_grant_once(db: Database, clock: FrozenClock) -> None:
    scope = new_tenant(db, clock)
    n = 8
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            with unit_of_work(db.engine) as s:
                results.append(service.grant_credits(s, scope, clock, amount=7 * MICRO, idempotency_key="race"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == n
    assert sum(1 for _, created in results if created) == 1
    assert len({bucket for bucket, _ in results}) == 1
    assert balance(db, scope, clock.now()) == 27 * MICRO
    with db.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM ledger_entry WHERE kind = 'grant'")).scalar_one() == 2
    assert_consistent(db)


# ---------------------------------------------------------------- plan allowance


def seed_pro(db: Database, clock: FrozenClock, included: int = 200 * MICRO) -> None:
    with unit_of_work(db.engine) as s:
        upsert_account_kit(s, clock, KitInput(key="kit_pro", name="Pro", allowed_primitives=["email.*"]))
        upsert_plan(s, clock, PlanInput(key="pro", name="Pro", account_kit_id="kit_pro", included_credits=included))
        upsert_plan(s, clock, PlanInput(key="zero", name="Zero", account_kit_id="kit_pro"))


def test_plan_allowance_once_per_period_expiring_at_period_end(db: Database, clock: FrozenClock) -> None:
    seed_pro(db, clock)
    scope = new_tenant(db, clock)
    start, end = T0 - timedelta(days=3), T0 + timedelta(days=27)

    def allowance(p_start: datetime, p_end: datetime, plan: str = "pro") -> bool:
        with unit_of_work(db.engine) as s:
            return service.grant_plan_allowance(s, scope, clock, plan_key=plan, period_start=p_start, period_end=p_end)

    assert allowance(start, end) is True
    assert allowance(start, end) is False
    assert balance(db, scope, clock.now()) == 220 * MICRO
    assert allowance(start, end, "zero") is False  # no included credits: nothing to grant
    clock.at = end - timedelta(microseconds=1)
    assert balance(db, scope, clock.now()) == 220 * MICRO
    clock.at = end
    assert balance(db, scope, clock.now()) == 20 * MICRO
    assert allowance(start, end) is False  # that period is over
    assert allowance(end, end + timedelta(days=30)) is True
    assert balance(db, scope, clock.now()) == 220 * MICRO
    debit(db, scope, clock, 1 * MICRO)
    with db.engine.connect() as c:
        rows = c.execute(text("SELECT kind, action, amount FROM ledger_entry ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [
        ("grant", "signup", 20 * MICRO),
        ("grant", "plan", 200 * MICRO),
        ("expiry", "expiry", -200 * MICRO),  # the next grant sweeps the expired bucket first
        ("grant", "plan", 200 * MICRO),
        ("debit", "email.send", -1 * MICRO),
    ]
    assert_consistent(db)
    with pytest.raises(NotFound), unit_of_work(db.engine) as s:
        service.grant_plan_allowance(s, scope, clock, plan_key="nope", period_start=start, period_end=end)


def test_calendar_period() -> None:
    at = datetime(2026, 2, 14, 9, 30, tzinfo=UTC)
    assert service.calendar_period(at, "month") == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    assert service.calendar_period(at, "year") == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert service.calendar_period(at, "day")[1] == datetime(2026, 2, 15, tzinfo=UTC)
    assert service.calendar_period(at, "week") == (datetime(2026, 2, 9, tzinfo=UTC), datetime(2026, 2, 16, tzinfo=UTC))
    dec = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert service.calendar_period(dec, "month")[1] == datetime(2027, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- reversals


def entry_ids(db: Database, kind: str) -> list[int]:
    with db.engine.connect() as c:
        rows = c.execute(text("SELECT id FROM ledger_entry WHERE kind = :k ORDER BY id"), {"k": kind})
        return [int(r[0]) for r in rows]


def test_reversing_a_debit_gives_the_credits_back_once(db: Database, clock: FrozenClock) -> None:
    scope = new_tenant(db, clock)
    debit(db, scope, clock, 3 * MICRO)
    (debit_id,) = entry_ids(db, "debit")
    with unit_of_work(db.engine) as s:
        rev = service.reverse(s, scope, clock, entry_id=debit_id, reason="upstream failed", idempotency_key="r1")
    assert (rev.amount, rev.created, rev.balance_after) == (3 * MICRO, True, 20 * MICRO)
    assert balance(db, scope, clock.now()) == 20 * MICRO
    assert_consistent(db)
    with unit_of_work(db.engine) as s:
        again = service.reverse(s, scope, clock, entry_id=debit_id, reason="upstream failed", idempotency_key="r1")
    assert again.created is False and again.amount == 3 * MICRO
    before = count_rows(db.engine, *ALL_TABLES)
    with pytest.raises(Conflict), unit_of_work(db.engine) as s:
        service.reverse(s, scope, clock, entry_id=debit_id, reason="twice", idempotency_key="r2")
    (grant_id,) = entry_ids(db, "grant")
    with pytest.raises(Conflict), unit_of_work(db.engine) as s:
        service.reverse(s, scope, clock, entry_id=grant_id, reason="key reused", idempotency_key="r1")
    (rev_id,) = entry_ids(db, "reversal")
    with pytest.raises(ValidationFailed), unit_of_work(db.engine) as s:
        service.reverse(s, scope, clock, entry_id=rev_id, reason="undo the undo", idempotency_key="r3")
    with pytest.raises(NotFound), unit_of_work(db.engine) as s:
        service.reverse(s, scope, clock, entry_id=10**12, reason="missing", idempotency_key="r4")
    assert count_rows(db.engine, *ALL_TABLES) == before


def test_reversing_a_grant_takes_back_what_did_not_expire(db: Database, clock: FrozenClock) -> None:
    scope = new_tenant(db, clock, signup=5 * MICRO)
    grant(db, scope, clock, 10 * MICRO, "mistake", expires_at=T0 + timedelta(days=1))
    debit(db, scope, clock, 4 * MICRO)  # from the expiring grant first: 6 of it left
    mistake = entry_ids(db, "grant")[1]
    with unit_of_work(db.engine) as s:
        rev = service.reverse(s, scope, clock, entry_id=mistake, reason="wrong tenant", idempotency_key="x")
    # 6 left of it, plus the 4 already spent come out of the signup bucket.
    assert rev.amount == -10 * MICRO
    assert balance(db, scope, clock.now()) == 1 * MICRO
    assert_consistent(db)


def test_another_tenants_entry_cannot_be_reversed(db: Database, clock: FrozenClock) -> None:
    a = new_tenant(db, clock)
    b = new_tenant(db, clock)
    (a_grant, _b_grant) = entry_ids(db, "grant")
    with pytest.raises(NotFound), unit_of_work(db.engine) as s:
        service.reverse(s, b, clock, entry_id=a_grant, reason="nope", idempotency_key="x")
    assert balance(db, a, clock.now()) == 20 * MICRO


# ---------------------------------------------------------------- reconciliation and packs


@pytest.mark.drift_expected  # breaks the books on purpose
def test_reconcile_reports_drift_per_tenant(db: Database, clock: FrozenClock) -> None:
    a = new_tenant(db, clock)
    b = new_tenant(db, clock)
    assert_consistent(db)
    with db.engine.begin() as c:  # simulate a bug that touched the cache without an entry
        c.execute(text("UPDATE credit_account SET balance = balance + 5 WHERE tenant_id = :t"), {"t": b.tenant_id})
    with unit_of_work(db.engine, write=False) as s:
        report = service.reconcile(s)
    assert report.checked == 2
    assert [d.tenant_id for d in report.drifted] == [b.tenant_id]
    (d,) = report.drifted
    assert (d.balance, d.ledger_sum, d.drift) == (20 * MICRO + 5, 20 * MICRO, 5)
    assert any("ledger sum" in p for p in d.problems)
    assert a.tenant_id in {x.tenant_id for x in report.all}


def test_packs(db: Database, clock: FrozenClock) -> None:
    with unit_of_work(db.engine, write=False) as s:
        assert [(p.key, p.credits, p.price_usd_cents) for p in list_packs(s)] == [
            ("small", 20 * MICRO, 1000),
            ("medium", 50 * MICRO, 2300),
            ("large", 120 * MICRO, 5000),
        ]
        assert pack_by_key(s, "medium") is not None and pack_by_key(s, "nope") is None
        assert pack_by_price(s, "price_nope") is None
        assert [(p.key, n) for p, n in packs_covering(s, 1)] == [("small", 1), ("medium", 1), ("large", 1)]
        assert [(p.key, n) for p, n in packs_covering(s, 30 * MICRO)] == [("medium", 1), ("large", 1)]
        # No pack covers 500 alone: the cheapest combination that does (4 x 120 + 1 x 20, $210).
        assert [(p.key, n) for p, n in packs_covering(s, 500 * MICRO)] == [("large", 4), ("small", 1)]


def test_purchase_grant_never_expires_unless_the_pack_says_so(db: Database, clock: FrozenClock) -> None:
    scope = new_tenant(db, clock, signup=0)
    with unit_of_work(db.engine) as s:
        pack = pack_by_key(s, "medium")
        assert pack is not None
        bucket, created = service.grant_purchase(s, scope, clock, pack=pack, grant_key="cs_1")
        assert created
        assert service.grant_purchase(s, scope, clock, pack=pack, grant_key="cs_1") == (bucket, False)
    clock.advance(days=3650)
    assert balance(db, scope, clock.now()) == 50 * MICRO
    assert_consistent(db)
