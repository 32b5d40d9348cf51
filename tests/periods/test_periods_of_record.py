"""The period of record (issue 8, points 1 and 2): a late renewal, a mid-way change, a
canceled subscription, and past periods read from what was recorded. Injected clock, both
databases."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.core.clock import FrozenClock
from app.periods.rules import Period
from tests.conftest import Api, count_rows
from tests.credits.test_credits_graphql import GRANT
from tests.fixtures_catalog import PLAN, SET_SUB, seed_catalog
from tests.metering.test_metering_basic import CHARGE
from tests.metering.test_metering_reads import counting
from tests.metering.test_usage_series import _driver_statements, _transaction

USAGE = """query($at: DateTime) { viewer { usage(at: $at) { plan period { start end }
  quotas { primitive quota used remaining } } } }"""
PERIODS = """query($n: Int!, $after: String) { periods(first: $n, after: $after) {
  pageInfo { hasNextPage endCursor }
  nodes { period { start end } plan source provisional quotas { primitive quota used } usage { primitive used } } } }"""


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def iso(text: str) -> str:
    return at(text).isoformat()


class Tenant:
    def __init__(self, api: Api, clock: FrozenClock) -> None:
        seed_catalog(api)
        # The demo kits cap email.send per call; this plan's kit does not.
        std: dict[str, Any] = {"key": "std", "name": "Std", "accountKitId": "kit_basic", "period": "month"}
        std["quotas"] = [{"primitive": "email.send", "quota": 1000}, {"primitive": "search.web", "quota": 5000}]
        assert api(PLAN, {"i": std})["upsertPlan"]["__typename"] == "Plan"
        self.api, self.clock = api, clock
        self.id = api.create_tenant("Late")
        self.key = api.tenant_key(self.id)
        assert api(GRANT, {"t": self.id, "a": "100000", "k": "seed"})["grantCredits"]["__typename"] == "CreditGrant"
        self.n = 0

    def subscribe(
        self, plan: str, start: str | None, end: str | None, status: str = "active", *, past_ok: bool = False
    ) -> None:
        """past_ok: a period that already ended may be refused (PERIOD_END_IN_PAST), which changes nothing."""
        i: dict[str, Any] = {"planKey": plan, "status": status}
        if start:
            i["currentPeriodStart"] = iso(start)
        if end:
            i["currentPeriodEnd"] = iso(end)
        out = self.api(SET_SUB, {"t": self.id, "i": i})["setSubscription"]
        if past_ok and out.get("code") == "PERIOD_END_IN_PAST":
            return
        assert out["__typename"] == "SubscriptionChanged", out

    def charge(self, quantity: int, primitive: str = "email.send") -> dict[str, Any]:
        self.n += 1
        body = {"primitive": primitive, "idempotencyKey": f"c{self.n}", "quantity": quantity}
        out = self.api(CHARGE, {"i": body}, key=self.key)["charge"]
        return out  # type: ignore[no-any-return]

    def usage(self, when: str | None = None) -> dict[str, Any]:
        out = self.api(USAGE, {"at": iso(when) if when else None}, key=self.key)["viewer"]["usage"]
        return out  # type: ignore[no-any-return]

    def periods(self, n: int = 10, after: str | None = None) -> dict[str, Any]:
        return self.api(PERIODS, {"n": n, "after": after}, key=self.key)["periods"]  # type: ignore[no-any-return]


def used(report: dict[str, Any], primitive: str = "email.send") -> int:
    return next(q["used"] for q in report["quotas"] if q["primitive"] == primitive)


def test_late_renewal_gap_counts_once_in_the_period_stripe_names(api: Api, clock: FrozenClock) -> None:
    t = Tenant(api, clock)
    clock.at = at("2026-03-10T12:00:00")
    t.subscribe("std", "2026-02-15T00:00:00", "2026-03-15T00:00:00")
    before = t.charge(600)
    assert before["__typename"] == "Charged", before
    assert before["usage"] == {"primitive": "email.send", "used": 600, "quota": 1000, "remaining": 400, "overage": 0}

    # The period ended; Stripe's renewal webhook is late. The gap is the next subscription period
    # (anchored on the 15th), not the calendar month, with its own quota counted from zero.
    clock.at = at("2026-03-15T00:05:00")
    gap = t.charge(300)
    assert gap["__typename"] == "Charged", gap
    assert gap["usage"]["used"] == 300
    now = t.usage()
    assert now["period"] == {"start": iso("2026-03-15T00:00:00"), "end": iso("2026-04-15T00:00:00")}
    assert t.charge(800)["__typename"] == "QuotaExceeded"  # 300 + 800 > 1000
    assert t.charge(700)["usage"]["used"] == 1000
    listed = t.periods()["nodes"]
    assert [p["provisional"] for p in listed] == [True, False]

    # The renewal arrives for the period the gap was counted in: the gap's charges count there, once.
    clock.at = at("2026-03-15T00:10:00")
    t.subscribe("std", "2026-03-15T00:00:00", "2026-04-15T00:00:00")
    refused = t.charge(1)
    assert refused["__typename"] == "QuotaExceeded" and refused["used"] == 1000  # never usable twice
    assert used(t.usage()) == 1000
    # A duplicate of the renewal changes nothing.
    t.subscribe("std", "2026-03-15T00:00:00", "2026-04-15T00:00:00")
    assert used(t.usage()) == 1000
    past = t.usage("2026-03-01T00:00:00")
    assert past["period"] == {"start": iso("2026-02-15T00:00:00"), "end": iso("2026-03-15T00:00:00")}
    assert used(past) == 600
    listed = t.periods()["nodes"]
    assert [(p["period"]["start"], p["source"], p["provisional"], p["usage"]) for p in listed] == [
        (iso("2026-03-15T00:00:00"), "SUBSCRIPTION", False, [{"primitive": "email.send", "used": 1000}]),
        (iso("2026-02-15T00:00:00"), "SUBSCRIPTION", False, [{"primitive": "email.send", "used": 600}]),
    ]

    # After the renewed period: charges land in the next one, from zero again.
    clock.at = at("2026-04-15T00:00:01")
    assert t.charge(5)["usage"]["used"] == 5
    assert t.usage()["period"]["start"] == iso("2026-04-15T00:00:00")


def test_renewal_days_late_still_one_period_per_interval(api: Api, clock: FrozenClock) -> None:
    """The gap spans more than a whole interval: each interval is its own period, and the
    renewal that finally names the current one keeps what the gap counted."""
    t = Tenant(api, clock)
    clock.at = at("2026-01-31T10:00:00")
    t.subscribe("std", "2026-01-31T00:00:00", "2026-02-28T00:00:00")  # anchored on the 31st (clamped)
    t.charge(10)
    clock.at = at("2026-04-02T09:00:00")  # two periods later, no renewal seen
    assert t.charge(4)["usage"]["used"] == 4
    # Anchored like Stripe's billing cycle: the 31st survives February (Feb 28, then Mar 31).
    assert t.usage()["period"] == {"start": iso("2026-03-31T00:00:00"), "end": iso("2026-04-30T00:00:00")}
    t.subscribe("std", "2026-03-31T00:00:00", "2026-04-30T00:00:00")
    assert used(t.usage()) == 4
    assert [p["period"]["start"] for p in t.periods()["nodes"]] == [
        iso("2026-03-31T00:00:00"),
        iso("2026-01-31T00:00:00"),
    ]


def test_mid_way_change_closes_the_period_at_that_instant(api: Api, clock: FrozenClock) -> None:
    t = Tenant(api, clock)
    clock.at = at("2026-03-01T00:00:00")
    t.subscribe("std", "2026-02-15T00:00:00", "2026-03-15T00:00:00")
    t.charge(600)
    clock.at = at("2026-03-05T08:00:00")
    t.subscribe("free", "2026-03-05T08:00:00", "2026-04-05T08:00:00")  # plan change with an anchor reset
    now = t.usage()
    assert now["plan"] == "free"
    assert now["period"] == {"start": iso("2026-03-05T08:00:00"), "end": iso("2026-04-05T08:00:00")}
    assert used(now) == 0
    assert t.charge(100)["usage"]["used"] == 100
    assert t.charge(1)["__typename"] == "QuotaExceeded"  # free: 100
    # The closed period answers as recorded: the plan and the usage of its time.
    past = t.usage("2026-03-02T00:00:00")
    assert past["plan"] == "std" and used(past) == 600
    assert past["period"] == {"start": iso("2026-02-15T00:00:00"), "end": iso("2026-03-05T08:00:00")}

    # A plan change that keeps the subscription's period also closes the current one there.
    clock.at = at("2026-03-10T00:00:00")
    t.subscribe("std", "2026-03-05T08:00:00", "2026-04-05T08:00:00")
    assert t.usage()["period"] == {"start": iso("2026-03-10T00:00:00"), "end": iso("2026-04-05T08:00:00")}
    assert t.usage("2026-03-06T00:00:00")["plan"] == "free"
    starts = [(p["period"]["start"], p["period"]["end"], p["plan"]) for p in t.periods()["nodes"]]
    assert starts == [
        (iso("2026-03-10T00:00:00"), iso("2026-04-05T08:00:00"), "std"),
        (iso("2026-03-05T08:00:00"), iso("2026-03-10T00:00:00"), "free"),
        (iso("2026-02-15T00:00:00"), iso("2026-03-05T08:00:00"), "std"),
    ]


def test_canceled_subscription_falls_back_to_calendar_after_its_end(api: Api, clock: FrozenClock) -> None:
    t = Tenant(api, clock)
    clock.at = at("2026-03-01T00:00:00")
    t.subscribe("std", "2026-02-15T00:00:00", "2026-03-15T00:00:00", status="canceled")
    t.charge(2)
    clock.at = at("2026-03-20T00:00:00")
    assert t.charge(3)["usage"]["used"] == 3
    # The calendar month, but never overlapping the period before it.
    assert t.usage()["period"] == {"start": iso("2026-03-15T00:00:00"), "end": iso("2026-04-01T00:00:00")}
    assert [p["source"] for p in t.periods()["nodes"]] == ["CALENDAR", "SUBSCRIPTION"]


def test_periods_page_reads_in_constant_statements(api: Api, clock: FrozenClock) -> None:
    t = Tenant(api, clock)
    clock.at = at("2026-01-10T00:00:00")
    t.subscribe("std", "2026-01-01T00:00:00", "2026-02-01T00:00:00")
    for month in range(1, 7):
        clock.at = at(f"2026-{month:02d}-10T00:00:00")
        t.charge(month)
        t.charge(1, "search.web")
    with counting(api.db.engine) as small:
        two = t.periods(2)
    with counting(api.db.engine) as large:
        six = t.periods(6)
    assert len(two["nodes"]) == 2 and two["pageInfo"]["hasNextPage"] is True
    assert len(six["nodes"]) == 6 and six["pageInfo"]["hasNextPage"] is False
    assert len(small) == len(large), (small, large)
    assert [used(p) for p in six["nodes"]] == [6, 5, 4, 3, 2, 1]
    rest = t.periods(2, two["pageInfo"]["endCursor"])["nodes"]
    assert [p["period"]["start"] for p in rest] == [iso("2026-04-01T00:00:00"), iso("2026-03-01T00:00:00")]
    # usage(at) for any past moment costs the same as for now.
    with counting(api.db.engine) as now_read:
        t.usage()
    with counting(api.db.engine) as past_read:
        assert used(t.usage("2026-02-20T00:00:00")) == 2
    assert len(now_read) == len(past_read)
    bad = api(PERIODS, {"n": 2, "after": "nope"}, key=t.key, expect_errors=True)
    assert bad["errors"][0]["extensions"]["code"] == "VALIDATION_FAILED"


def test_charge_statement_count_and_roll_costs_three_more(api: Api, clock: FrozenClock) -> None:
    """The recorded period comes with the terms statement: the charge runs 7 statements; only the roll
    (no recorded period holds now) adds three, once per tenant and period."""
    t = Tenant(api, clock)
    clock.at = at("2026-03-10T12:00:00")
    t.subscribe("std", "2026-02-15T00:00:00", "2026-03-15T00:00:00")
    t.charge(1)
    clock.at = at("2026-03-16T00:00:00")
    if api.db.backend != "sqlite":
        # The driver trace is SQLite's; PostgreSQL runs the same statements. The roll records once.
        t.charge(1)
        t.charge(1)
        assert count_rows(api.db.engine, "billing_period")["billing_period"] == 2
        return
    with _driver_statements(api) as seen:
        t.charge(1)
    rolled_seen = list(seen)
    rolled = _transaction(rolled_seen)
    with _driver_statements(api) as seen:
        t.charge(1)
    steady_seen = list(seen)
    steady = _transaction(steady_seen)
    # The subscription's period and the provisional one after it.
    assert count_rows(api.db.engine, "billing_period")["billing_period"] == 2
    assert len(steady) == 7, "\n".join(steady)  # this kit has no per-minute limit: no rate window
    # The roll: the last recorded end and the new period (two statements), then the quota row of the
    # new period, which the locking statement could not know (once per tenant and period).
    assert len(rolled) == len(steady) + 3, "\n".join(rolled)
    # Recording the period fires the trigger that moves the tenant's terms version (migration 0025):
    # SQLite's trace echoes the INSERT for its program. The steady charge fires none.
    raw = _transaction(rolled_seen, triggers=True)
    echoes = [s for i, s in enumerate(raw) if i > 0 and s == raw[i - 1]]
    assert echoes and all(s.startswith("INSERT INTO billing_period") for s in echoes), echoes
    assert _transaction(steady_seen, triggers=True) == steady
    assert [s for s in steady if "billing_period" in s and "JOIN billing_period" not in s] == []


def test_the_predicted_period_follows_stripes_anchor() -> None:
    from app.periods.record import decide

    start, end = at("2026-01-31T10:00:00"), at("2026-02-28T10:00:00")
    expected = [
        ("2026-03-01T00:00:00", "2026-02-28T10:00:00", "2026-03-31T10:00:00"),
        ("2026-04-15T00:00:00", "2026-03-31T10:00:00", "2026-04-30T10:00:00"),
        ("2026-05-30T23:00:00", "2026-04-30T10:00:00", "2026-05-31T10:00:00"),
    ]
    for now, s, e in expected:
        assert decide(at(now), "month", "active", start, end, None) == (
            Period(at(s), at(e)),
            "subscription",
            True,
        ), now
    weekly = decide(
        at("2026-03-20T00:00:00"), "week", "past_due", at("2026-03-01T00:00:00"), at("2026-03-08T00:00:00"), None
    )
    assert weekly[0] == Period(at("2026-03-15T00:00:00"), at("2026-03-22T00:00:00"))
    # Not live: the calendar, never before the last recorded end.
    ended = decide(at("2026-03-20T00:00:00"), "month", "canceled", start, end, at("2026-03-05T00:00:00"))
    assert ended == (Period(at("2026-03-05T00:00:00"), at("2026-04-01T00:00:00")), "calendar", False)
