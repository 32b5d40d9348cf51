"""The period of record (README: "Billing periods of record").

Every charge counts in the tenant's recorded period that contains its instant. When none
does (the first charge, or the recorded period has ended), the next one is decided once, under
the tenant's account lock, and recorded:
- the subscription's period, when it contains now;
- a live subscription whose period has ended and whose renewal has not arrived: the period
  Stripe will report, the same interval stepped from the subscription's period end on its
  anchor day (periods.interval_after; recorded as provisional);
- otherwise the plan's calendar period in UTC.
The decided period always holds now: it never starts before the previous recorded period ended
nor ends after the next one starts, so periods never overlap.

When the subscription changes (set_subscription, a Stripe webhook), `record_subscription`:
- a renewal replaces a provisional period in place: charges already made in the gap stay
  counted in it, once, and it takes the renewal's end and plan (`_renew`: also when Stripe
  renews on another anchor than predicted, the gap's usage is never beside a fresh quota);
- a change mid-way (another plan, another anchor, a calendar period giving way to a
  subscription) closes the current period at that instant and opens the new one there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from app.core.clock import as_utc
from app.core.sql import Sql, read_ts, run, ts
from app.periods.rules import Period, calendar_period, interval_after

# Statuses under which Stripe keeps renewing: a period that ended is followed by the next one.
LIVE = ("active", "trialing", "past_due")

# The tenant's account row is the lock every charge takes first (app/metering/meter.py).
_LOCK = Sql("SELECT 1 FROM credit_account WHERE tenant_id = :tid", pg_suffix="FOR UPDATE")
# The recorded neighbours of `now`: the last end before it and the next start after it.
_BOUNDS = Sql(
    """SELECT (SELECT MAX(end_at) FROM billing_period WHERE tenant_id = :tid AND end_at <= :now),
              (SELECT MIN(start_at) FROM billing_period WHERE tenant_id = :tid AND start_at > :now)"""
)
_INSERT = Sql(
    """INSERT INTO billing_period (tenant_id, start_at, end_at, plan_key, source, provisional, created_at, updated_at)
       VALUES (:tid, :s, :e, :plan, :source, :prov, :now, :now) ON CONFLICT (tenant_id, start_at) DO NOTHING"""
)
_CONTAINING = Sql(
    """SELECT start_at, end_at, plan_key, source, provisional FROM billing_period
       WHERE tenant_id = :tid AND start_at <= :now AND end_at > :now"""
)
# Rare (a renewal on another anchor than predicted): did the period count a charge since `at`?
_COUNTED_SINCE = Sql(
    """SELECT 1 FROM usage_event WHERE tenant_id = :tid AND period_start = :ps AND created_at >= :at LIMIT 1"""
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


def decide(
    now: datetime,
    unit: str | None,
    sub_status: str | None,
    sub_start: datetime | None,
    sub_end: datetime | None,
    last_end: datetime | None,
    next_start: datetime | None = None,
) -> tuple[Period, str, bool]:
    """The period to record for `now` when no recorded period contains it: (period, source,
    provisional). It always holds `now`: it starts no earlier than the last recorded end before
    now and ends no later than the next recorded start after now, so periods never overlap."""
    unit = unit or "month"
    floor = last_end if last_end is not None and last_end <= now else None
    ceiling = next_start if next_start is not None and next_start > now else None

    def fit(p: Period) -> Period:
        start = max(p.start, floor) if floor is not None else p.start
        end = min(p.end, ceiling) if ceiling is not None else p.end
        return Period(start, end)

    if sub_start is not None and sub_end is not None and sub_start <= now < sub_end:
        out, source, provisional = fit(Period(sub_start, sub_end)), "subscription", False
    elif sub_end is not None and sub_status in LIVE and sub_end <= now:
        out, source, provisional = fit(interval_after(sub_start, sub_end, unit, now)), "subscription", True
    else:
        out, source, provisional = fit(calendar_period(now, unit)), "calendar", False
    if not out.holds(now):  # a broken invariant must never count a charge outside its period
        raise AssertionError(f"decided period {out} does not hold {now}")
    return out, source, provisional


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
    last_end, next_start = _bounds(conn, tenant_id, now)
    period, source, provisional = decide(now, unit, sub_status, sub_start, sub_end, last_end, next_start)
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
    last_end, next_start = _bounds(conn, tenant_id, now)
    return decide(now, unit, sub_status, sub_start, sub_end, last_end, next_start)[0]


def _bounds(conn: Connection, tenant_id: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    last, nxt = run(conn, _BOUNDS, {"tid": tenant_id, "now": ts(conn, now)}).one()
    return read_ts(last), read_ts(nxt)


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
            _renew(conn, tenant_id, cur, now, plan_key, sub_start, sub_end)
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


def _renew(
    conn: Connection,
    tenant_id: str,
    cur: Recorded,
    now: datetime,
    plan_key: str,
    sub_start: datetime,
    sub_end: datetime,
) -> None:
    """The late renewal of the provisional period that holds now: what the gap counted counts
    against the renewed period's quota, once, never beside a fresh one.
    - It starts where the renewed period starts, or later (it began at the previous recorded
      end): it becomes the renewed period, keeping its start and so its counters.
    - It started earlier (Stripe renewed on another anchor than predicted): when nothing was
      counted in it from the renewed period's start on, it is closed there and the renewed period
      opens there, exactly; otherwise it stretches to the renewal's end, so the charges made in
      the renewed period's time and those after the renewal share one quota."""
    if cur.period.start >= sub_start or _counted_since(conn, tenant_id, cur.period.start, sub_start):
        _update(conn, tenant_id, cur.period.start, sub_end, plan_key, "subscription", False, now)
        return
    # Closed where Stripe's renewed period starts: its end is no longer a guess.
    _update(conn, tenant_id, cur.period.start, sub_start, cur.plan_key, cur.source, False, now)
    _insert(conn, tenant_id, Period(sub_start, sub_end), plan_key, "subscription", False, now)


def _counted_since(conn: Connection, tenant_id: str, period_start: datetime, since: datetime) -> bool:
    params = {"tid": tenant_id, "ps": ts(conn, period_start), "at": ts(conn, since)}
    return run(conn, _COUNTED_SINCE, params).first() is not None


def _close_and_open(
    conn: Connection, tenant_id: str, cur: Recorded, now: datetime, new: Period, plan_key: str, source: str
) -> None:
    if cur.period.start >= now:
        # Opened this very instant: nothing to close, the period is replaced in place.
        _update(conn, tenant_id, cur.period.start, new.end, plan_key, source, False, now)
        return
    _update(conn, tenant_id, cur.period.start, now, cur.plan_key, cur.source, cur.provisional, now)
    _insert(conn, tenant_id, new, plan_key, source, False, now)
