"""Properties of the period of record (issue 17, item 5), generated with hypothesis over plan
periods (day, week, month, year), anchors (the 28th to the 31st, Feb 29 of leap years, any
day and time), 14-day and other trials, and renewal delays from none to more than two periods:

- the period a charge lands in holds the charge's time;
- the period predicted after an ended one is the one Stripe will report (its billing cycle
  stepped from the anchor, days clamped to short months);
- total accepted against a quota over a Stripe period never exceeds the quota, whatever
  happened between the period's end and its late renewal.

The arithmetic is tested directly (pure functions, many examples); the database property
replays whole subscriptions through the GraphQL API on SQLite and PostgreSQL with few
examples. derandomize and no example database keep CI stable."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, Phase, assume, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from app.core.clock import FrozenClock
from app.periods.record import decide
from app.periods.rules import Period, interval_after
from tests.conftest import Api
from tests.fixtures_catalog import PLAN
from tests.periods.test_periods_of_record import Tenant

UNITS = ("day", "week", "month", "year")
APPROX = {
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
    "month": timedelta(days=30),
    "year": timedelta(days=365),
}
PURE = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def stripe_boundary(anchor: datetime, n: int, unit: str) -> datetime:
    """Stripe's billing cycle, written independently of app/: the anchor moved by n intervals,
    months and years keeping the anchor's day, clamped to the month's length."""
    if unit == "day":
        return anchor + timedelta(days=n)
    if unit == "week":
        return anchor + timedelta(weeks=n)
    year, month0 = divmod(anchor.year * 12 + anchor.month - 1 + n * (12 if unit == "year" else 1), 12)
    last = calendar.monthrange(year, month0 + 1)[1]
    return anchor.replace(year=year, month=month0 + 1, day=min(anchor.day, last))


def stripe_interval(anchor: datetime, unit: str, at: datetime) -> Period:
    n = 0
    while stripe_boundary(anchor, n + 1, unit) <= at:
        n += 1
    return Period(stripe_boundary(anchor, n, unit), stripe_boundary(anchor, n + 1, unit))


@dataclass(frozen=True)
class Sub:
    """A subscription whose current period [start, end) is about to end. `anchor` is Stripe's
    billing cycle anchor: the cycle's when the period is a whole cycle, the trial's end after a
    trial (Stripe anchors the first paid cycle on it)."""

    unit: str
    start: datetime
    end: datetime
    anchor: datetime
    trial: bool

    def ambiguous(self) -> bool:
        # A yearly cycle anchored on Feb 29 whose both ends fell in common years (Feb 28 ->
        # Feb 28) cannot tell its anchor from the period alone: the 28th is predicted, which
        # differs from Stripe only after the next Feb 28 of a leap year (a renewal more than a
        # year late). docs/periods.md states it.
        return self.unit == "year" and not self.trial and self.anchor.day > self.start.day == self.end.day


@st.composite
def anchors(draw: st.DrawFn) -> datetime:
    year = draw(st.integers(2023, 2031))
    month = draw(st.integers(1, 12))
    day = draw(st.one_of(st.sampled_from([1, 28, 29, 30, 31]), st.integers(1, 31)))
    if draw(st.booleans()):  # Feb 29 of a leap year
        year, month, day = draw(st.sampled_from([2024, 2028])), 2, 29
    day = min(day, calendar.monthrange(year, month)[1])
    return datetime(
        year, month, day, draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59)), tzinfo=UTC
    )


@st.composite
def subs(draw: st.DrawFn, units: tuple[str, ...] = UNITS) -> Sub:
    unit = draw(st.sampled_from(units))
    anchor = draw(anchors())
    if draw(st.booleans()):
        # A trial ending at `anchor`; fewer than 28 days, so never a whole monthly cycle.
        days = draw(st.one_of(st.just(14), st.integers(1, 27)))
        return Sub(unit, anchor - timedelta(days=days), anchor, anchor, True)
    k = draw(st.integers(0, 30 if unit in ("day", "week") else 14))
    return Sub(unit, stripe_boundary(anchor, k, unit), stripe_boundary(anchor, k + 1, unit), anchor, False)


@st.composite
def delays(draw: st.DrawFn, sub: Sub) -> datetime:
    """An instant at or after the period's end: any delay up to 2.5 periods, or right at / next to
    one of Stripe's next boundaries."""
    if draw(st.booleans()):
        fraction = draw(st.floats(0, 2.5))
        return sub.end + timedelta(seconds=int(APPROX[sub.unit].total_seconds() * fraction))
    n = draw(st.integers(0, 3))
    cycle = sub.end if sub.trial else sub.anchor
    base = sub.end if n == 0 else stripe_boundary(cycle, stripe_index(sub) + n, sub.unit)
    return max(sub.end, base + timedelta(seconds=draw(st.sampled_from([-1, 0, 1]))))


def stripe_index(sub: Sub) -> int:
    """The index of sub.end on Stripe's cycle (0 after a trial: the cycle starts at its end)."""
    if sub.trial:
        return 0
    n = 0
    while stripe_boundary(sub.anchor, n, sub.unit) < sub.end:
        n += 1
    return n


def next_stripe_period(sub: Sub, at: datetime) -> Period:
    return stripe_interval(sub.end if sub.trial else sub.anchor, sub.unit, at)


def test_the_finding_and_month_ends_by_hand() -> None:
    """Named cases the generators also reach: the finding's trial, a month end, a leap day."""
    jan4 = datetime(2027, 1, 4, 10, tzinfo=UTC)
    trial = interval_after(datetime(2026, 12, 20, tzinfo=UTC), datetime(2027, 1, 3, tzinfo=UTC), "month", jan4)
    assert trial == Period(datetime(2027, 1, 3, tzinfo=UTC), datetime(2027, 2, 3, tzinfo=UTC))
    clamped = interval_after(
        datetime(2026, 1, 31, tzinfo=UTC), datetime(2026, 2, 28, tzinfo=UTC), "month", datetime(2026, 3, 5, tzinfo=UTC)
    )
    assert clamped == Period(datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC))
    leap = interval_after(
        datetime(2024, 2, 29, tzinfo=UTC), datetime(2025, 2, 28, tzinfo=UTC), "year", datetime(2028, 3, 1, tzinfo=UTC)
    )
    assert leap == Period(datetime(2028, 2, 29, tzinfo=UTC), datetime(2029, 2, 28, tzinfo=UTC))
    # A trial that ends on a month's last day renews on that day, not on a later anchor.
    short = interval_after(
        datetime(2027, 2, 14, tzinfo=UTC), datetime(2027, 2, 28, tzinfo=UTC), "month", datetime(2027, 3, 29, tzinfo=UTC)
    )
    assert short == Period(datetime(2027, 3, 28, tzinfo=UTC), datetime(2027, 4, 28, tzinfo=UTC))


@PURE
@given(st.data())
def test_the_period_after_an_ended_one_holds_now_and_is_stripes(data: st.DataObject) -> None:
    sub = data.draw(subs())
    now = data.draw(delays(sub))
    got = interval_after(sub.start, sub.end, sub.unit, now)
    assert got.holds(now), (sub, now, got)
    assert decide(now, sub.unit, "trialing" if sub.trial else "active", sub.start, sub.end, sub.end) == (
        got,
        "subscription",
        True,
    )
    if not sub.ambiguous():
        assert got == next_stripe_period(sub, now), (sub, now)


@st.composite
def instants(draw: st.DrawFn, around: datetime, before: bool) -> datetime:
    seconds = draw(st.integers(0, 3 * 366 * 86400))
    return around - timedelta(seconds=seconds) if before else around + timedelta(seconds=seconds + 1)


@PURE
@given(st.data())
def test_a_decided_period_always_holds_now(data: st.DataObject) -> None:
    """Whatever the subscription says (or none), whatever its status, and whatever was recorded
    before and after: the decided period holds now and overlaps no recorded neighbour."""
    sub = data.draw(subs())
    now = data.draw(st.one_of(delays(sub), instants(sub.end, before=True)))
    status = data.draw(st.sampled_from(["active", "trialing", "past_due", "canceled", "unpaid", "paused", None]))
    start, end = (sub.start, sub.end) if data.draw(st.booleans()) else (None, None)
    floor = data.draw(st.one_of(st.none(), instants(now, before=True)))
    ceiling = data.draw(st.one_of(st.none(), instants(now, before=False)))
    period, source, provisional = decide(now, sub.unit, status, start, end, floor, ceiling)
    assert period.holds(now), (sub, now, status, floor, ceiling, period)
    assert floor is None or period.start >= floor
    assert ceiling is None or period.end <= ceiling
    assert provisional == (source == "subscription" and end is not None and end <= now)


# The database property: whole subscriptions replayed through the API. Few examples (each is a
# tenant and some twenty requests); the fixtures are per test, the tenants per example.
DB = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    # No shrinking: a failure reports the example as generated, in seconds rather than minutes.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
QUOTA = 3


def offsets(draw: st.DrawFn, period: Period, least: int, most: int) -> list[datetime]:
    span = int((period.end - period.start).total_seconds())
    if span <= 0:
        return []
    seconds = draw(st.lists(st.integers(0, span - 1), min_size=least, max_size=most))
    return [period.start + timedelta(seconds=o) for o in sorted(seconds)]


@dataclass(frozen=True)
class Scenario:
    """A subscription period, charges in it, charges after its end (the gap), its late renewal
    (optionally preceded by a stale one), charges after the renewal and maybe one after that."""

    sub: Sub
    renewal_at: datetime
    during: list[datetime]
    gap: list[datetime]
    stale_first: bool
    after: list[datetime]
    next_period: timedelta | None

    @property
    def renewed(self) -> Period:
        return next_stripe_period(self.sub, self.renewal_at)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    # Months and years twice as often: their anchors are where a prediction can go wrong.
    sub = draw(subs(("month", "year", "day", "month", "week", "year")))
    assume(not sub.ambiguous())
    renewal_at = draw(delays(sub))
    renewed = next_stripe_period(sub, renewal_at)
    return Scenario(
        sub,
        renewal_at,
        offsets(draw, Period(sub.start, sub.end), 0, 2),
        offsets(draw, Period(sub.end, renewal_at), 2, 5),
        draw(st.booleans()),
        offsets(draw, Period(renewal_at, renewed.end), 1, 4),
        draw(st.one_of(st.none(), st.integers(0, 3600).map(lambda s: timedelta(seconds=s)))),
    )


def utc(value: Any) -> datetime:
    """A time as the test writes it, or as either database hands it back."""
    value = datetime.fromisoformat(value) if isinstance(value, str) else value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def rows(api: Api, sql: str, tenant: str) -> list[Any]:
    with api.db.engine.connect() as c:
        return list(c.execute(text(sql), {"t": tenant}))


# The finding, always run: a 14-day trial Dec 20 -> Jan 3 on a monthly plan, three charges
# after Jan 3, the renewal Jan 3 -> Feb 3 on Jan 5, three more tries (main accepted all six).
FINDING = Scenario(
    Sub("month", utc("2026-12-20T00:00:00"), utc("2027-01-03T00:00:00"), utc("2027-01-03T00:00:00"), True),
    utc("2027-01-05T10:00:00"),
    [utc("2026-12-25T09:00:00")],
    [utc("2027-01-04T10:00:00"), utc("2027-01-04T11:00:00"), utc("2027-01-04T12:00:00")],
    False,
    [utc("2027-01-05T10:00:00"), utc("2027-01-21T00:00:00"), utc("2027-02-02T23:59:59")],
    timedelta(seconds=1),
)


@DB
@example(FINDING)
@given(scenarios())
def test_a_late_renewal_never_gives_a_quota_twice(api: Api, clock: FrozenClock, s: Scenario) -> None:
    sub, renewed = s.sub, s.renewed
    late = (s.renewal_at - sub.end) / APPROX[sub.unit]
    event(f"{sub.unit}, {'trial' if sub.trial else 'cycle'}")
    event("renewal: on time" if late == 0 else "renewal: within a period" if late < 1 else "renewal: later")
    event(f"charges in the gap: {min(len(s.gap), 3)}{'+' if len(s.gap) >= 3 else ''}")
    plan: dict[str, Any] = {"key": f"q_{sub.unit}", "name": "Q", "accountKitId": "kit_basic", "period": sub.unit}
    plan["quotas"] = [{"primitive": "email.send", "quota": QUOTA}]

    clock.at = sub.start
    t = Tenant(api, clock)
    assert api(PLAN, {"i": plan})["upsertPlan"]["__typename"] == "Plan"
    t.subscribe(plan["key"], sub.start.isoformat(), sub.end.isoformat(), status="trialing" if sub.trial else "active")
    attempts: list[tuple[datetime, bool]] = []

    def charge(when: datetime) -> None:
        clock.at = when
        out = t.charge(1)
        assert out["__typename"] in ("Charged", "QuotaExceeded"), out
        attempts.append((when, out["__typename"] == "Charged"))

    for when in s.during + s.gap:  # the gap: the period ended, no renewal yet
        charge(when)
    clock.at = s.renewal_at
    first = next_stripe_period(sub, sub.end)
    if first != renewed and s.stale_first:
        # A stale renewal first (the interval that already ended): it must change nothing (it is
        # refused outright when that interval ended before now: PERIOD_END_IN_PAST).
        t.subscribe(plan["key"], first.start.isoformat(), first.end.isoformat(), past_ok=True)
    t.subscribe(plan["key"], renewed.start.isoformat(), renewed.end.isoformat())
    for when in s.after:
        charge(when)
    if s.next_period is not None:  # and one in the period after the renewed one
        charge(renewed.end + s.next_period)

    # Every charge counted in a recorded period that holds its time; recorded periods never overlap.
    periods = sorted(
        (utc(r[0]), utc(r[1]))
        for r in rows(api, "SELECT start_at, end_at FROM billing_period WHERE tenant_id = :t", t.id)
    )
    assert all(a[1] <= b[0] for a, b in zip(periods, periods[1:], strict=False)), periods
    bounds = dict(periods)
    events = rows(api, "SELECT period_start, created_at FROM usage_event WHERE tenant_id = :t", t.id)
    assert len(events) == sum(ok for _, ok in attempts)
    for period_start, created in events:
        start = utc(period_start)
        assert start in bounds and start <= utc(created) < bounds[start], (start, created, periods)

    # Per Stripe period (the one that ended, each interval after it): exactly the quota's worth
    # accepted when that much was tried, never more, however late the renewal came.
    last = max((when for when, _ in attempts), default=sub.start)
    stripe_periods = [Period(sub.start, sub.end)]
    while stripe_periods[-1].end <= last:
        stripe_periods.append(next_stripe_period(sub, stripe_periods[-1].end))
    for p in stripe_periods:
        tried = [ok for when, ok in attempts if p.holds(when)]
        assert sum(tried) == min(QUOTA, len(tried)), (s, p, attempts, periods)
