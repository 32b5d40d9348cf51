"""The period of record (README: "Billing periods of record").

Every charge counts in the tenant's recorded period that contains its instant. When none
does (the first charge, or the recorded period has ended), the next one is decided once, under
the tenant's account lock, and recorded:
- the subscription's period, when it contains now;
- a live subscription whose period has ended and whose renewal has not arrived: the period
  Stripe will report, the same interval anchored on the subscription's period end
  (recorded as provisional);
- otherwise the plan's calendar period in UTC.
A new period never starts before the previous one ended, so periods never overlap.

When the subscription changes (set_subscription, a Stripe webhook), `record_subscription`:
- a renewal replaces a provisional period in place: charges already made in the gap stay
  counted in it, once, and it takes the renewal's end and plan;
- a change mid-way (another plan, another anchor, a calendar period giving way to a
  subscription) closes the current period at that instant and opens the new one there.
"""

from __future__ import annotations

import calendar as _calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from app.core.clock import as_utc
from app.core.sql import Sql, read_ts, run, ts
from app.metering.periods import Period, calendar_period

# Statuses under which Stripe keeps renewing: a period that ended is followed by the next one.
LIVE = ("active", "trialing", "past_due")
_FIXED = {"day": timedelta(days=1), "week": timedelta(weeks=1)}

# The tenant's account row is the lock every charge takes first (app/metering/service.py).
_LOCK = Sql("SELECT 1 FROM credit_account WHERE tenant_id = :tid", pg_suffix="FOR UPDATE")
_LAST_END = Sql("SELECT MAX(end_at) FROM billing_period WHERE tenant_id = :tid AND end_at <= :now")
_INSERT = Sql(
    """INSERT INTO billing_period (tenant_id, start_at, end_at, plan_key, source, provisional, created_at, updated_at)
       VALUES (:tid, :s, :e, :plan, :source, :prov, :now, :now) ON CONFLICT (tenant_id, start_at) DO NOTHING"""
)
_CONTAINING = Sql(
    """SELECT start_at, end_at, plan_key, source, provisional FROM billing_period
       WHERE tenant_id = :tid AND start_at <= :now AND end_at > :now"""
)
_UPDATE = Sql(
    """UPDATE billing_period SET end_at = :e, plan_key = :plan, source = :source, provisional = :prov,
       updated_at = :now WHERE tenant_id = :tid AND start_at = :s"""
)


@dataclass(frozen=True)
class Recorded:
    period: Period
    plan_key: str | None
    source: str
    provisional: bool


def lock(conn: Connection, tenant_id: str) -> None:
    run(conn, _LOCK, {"tid": tenant_id}).first()


def add_units(anchor: datetime, n: int, unit: str, day: int | None = None) -> datetime:
    """`anchor` moved by n plan periods; months land on `day` (default the anchor's), clamped to
    the month's length, as Stripe's billing cycle anchor does (Jan 31, Feb 28, Mar 31)."""
    if unit in _FIXED:
        return anchor + n * _FIXED[unit]
    months = n * (12 if unit == "year" else 1)
    y, m = divmod(anchor.month - 1 + months, 12)
    year, month = anchor.year + y, m + 1
    return anchor.replace(year=year, month=month, day=min(day or anchor.day, _calendar.monthrange(year, month)[1]))


def decide(
    now: datetime,
    unit: str | None,
    sub_status: str | None,
    sub_start: datetime | None,
    sub_end: datetime | None,
    last_end: datetime | None,
) -> tuple[Period, str, bool]:
    """The period to record for `now` when no recorded period contains it: (period, source, provisional)."""
    unit = unit or "month"
    floor = last_end if last_end is not None and last_end <= now else None

    def after_floor(start: datetime) -> datetime:
        return max(start, floor) if floor is not None else start

    if sub_start is not None and sub_end is not None and sub_start <= now < sub_end:
        return Period(after_floor(sub_start), sub_end), "subscription", False
    if sub_end is not None and sub_status in LIVE and sub_end <= now:
        # Stripe's anchor day survives short months: a period Jan 31 - Feb 28 renews to Mar 31.
        # One of the period's two ends carries it unclamped.
        day = max(sub_end.day, sub_start.day) if sub_start is not None else sub_end.day
        n = 0
        if unit in _FIXED:  # jump straight to the interval that holds now
            n = int((now - sub_end) / _FIXED[unit])
        while add_units(sub_end, n + 1, unit, day) <= now:
            n += 1
        start, end = add_units(sub_end, n, unit, day), add_units(sub_end, n + 1, unit, day)
        return Period(after_floor(start), end), "subscription", True
    cal = calendar_period(now, unit)
    return Period(after_floor(cal.start), cal.end), "calendar", False


def roll(
    conn: Connection,
    tenant_id: str,
    now: datetime,
    plan_key: str | None,
    unit: str | None,
    sub_status: str | None,
    sub_start: datetime | None,
    sub_end: datetime | None,
) -> Period:
    """Record the period that holds `now` (the caller holds the tenant's account lock and found none)."""
    last = run(conn, _LAST_END, {"tid": tenant_id, "now": ts(conn, now)}).scalar_one()
    last_end = read_ts(last)
    period, source, provisional = decide(now, unit, sub_status, sub_start, sub_end, last_end)
    _insert(conn, tenant_id, period, plan_key, source, provisional, now)
    return period


def predict(
    conn: Connection,
    tenant_id: str,
    now: datetime,
    unit: str | None,
    sub_status: str | None,
    sub_start: datetime | None,
    sub_end: datetime | None,
) -> Period:
    """The period a charge at `now` would record, without recording it (read-only callers)."""
    last = run(conn, _LAST_END, {"tid": tenant_id, "now": ts(conn, now)}).scalar_one()
    last_end = read_ts(last)
    return decide(now, unit, sub_status, sub_start, sub_end, last_end)[0]


def _insert(
    conn: Connection,
    tenant_id: str,
    period: Period,
    plan_key: str | None,
    source: str,
    provisional: bool,
    now: datetime,
) -> None:
    run(
        conn,
        _INSERT,
        {
            "tid": tenant_id,
            "s": ts(conn, period.start),
            "e": ts(conn, period.end),
            "plan": plan_key,
            "source": source,
            "prov": provisional,
            "now": ts(conn, now),
        },
    )


def containing(conn: Connection, tenant_id: str, at: datetime) -> Recorded | None:
    row = run(conn, _CONTAINING, {"tid": tenant_id, "now": ts(conn, at)}).first()
    return _recorded(row) if row is not None else None


def _texts(start: str, end: str) -> Period:
    # SQLite hands the times back as the text they are stored as.
    return Period(as_utc(datetime.fromisoformat(start)), as_utc(datetime.fromisoformat(end)))


def _recorded(row: Any) -> Recorded:
    start, end, plan, source, prov = row
    return Recorded(
        Period(as_utc(start), as_utc(end)) if isinstance(start, datetime) else _texts(start, end),
        plan,
        source,
        bool(prov),
    )


def _update(
    conn: Connection,
    tenant_id: str,
    start: datetime,
    end: datetime,
    plan: str | None,
    source: str,
    provisional: bool,
    now: datetime,
) -> None:
    run(
        conn,
        _UPDATE,
        {
            "tid": tenant_id,
            "s": ts(conn, start),
            "e": ts(conn, end),
            "plan": plan,
            "source": source,
            "prov": provisional,
            "now": ts(conn, now),
        },
    )


def record_subscription(
    conn: Connection,
    tenant_id: str,
    now: datetime,
    plan_key: str,
    unit: str,
    status: str,
    sub_start: datetime | None,
    sub_end: datetime | None,
) -> None:
    """Bring the recorded periods in line with a subscription just reflected. The caller holds
    the tenant's account lock, so no charge decides a period meanwhile."""
    cur = containing(conn, tenant_id, now)
    live_period = sub_start is not None and sub_end is not None and sub_start <= now < sub_end
    if live_period:
        assert sub_start is not None and sub_end is not None
        if cur is None:
            roll(conn, tenant_id, now, plan_key, unit, status, sub_start, sub_end)
            return
        if cur.provisional and cur.plan_key == plan_key:
            # The late renewal: the gap's charges are already counted here, once; keep them.
            _update(conn, tenant_id, cur.period.start, sub_end, plan_key, "subscription", False, now)
            return
        same = cur.source == "subscription" and cur.plan_key == plan_key and cur.period.end == sub_end
        if same:
            return
        if (
            cur.source == "subscription"
            and not cur.provisional
            and cur.plan_key == plan_key
            and (cur.period.start == sub_start)
        ):
            # The same period, its end moved (Stripe extended or shortened it): not a new period.
            _update(conn, tenant_id, cur.period.start, sub_end, plan_key, "subscription", False, now)
            return
        _close_and_open(conn, tenant_id, cur, now, Period(now, sub_end), plan_key, "subscription")
        return
    if cur is None:
        return  # nothing counted now yet: the next charge decides the period
    if cur.plan_key != plan_key or (cur.provisional and status not in LIVE):
        # Another plan mid-way, or the awaited renewal will not come: a calendar period from now.
        _close_and_open(conn, tenant_id, cur, now, Period(now, calendar_period(now, unit).end), plan_key, "calendar")


def _close_and_open(
    conn: Connection, tenant_id: str, cur: Recorded, now: datetime, new: Period, plan_key: str, source: str
) -> None:
    if cur.period.start >= now:
        # Opened this very instant: nothing to close, the period is replaced in place.
        _update(conn, tenant_id, cur.period.start, new.end, plan_key, source, False, now)
        return
    _update(conn, tenant_id, cur.period.start, now, cur.plan_key, cur.source, cur.provisional, now)
    _insert(conn, tenant_id, new, plan_key, source, False, now)
