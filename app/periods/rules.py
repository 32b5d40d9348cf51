"""Billing periods. The period is the subscription's current period when there is one
and `now` falls inside it; otherwise the calendar period of the plan in UTC.

The pure arithmetic of subscription periods lives here too (README: "Billing periods of
record"): how Stripe steps a period forward (`add_units`), which day of the month it renews on
(`anchor_day`), and the interval after an ended period that holds a given instant
(`interval_after`). period_record.py decides and records periods with them."""

from __future__ import annotations

import calendar as _calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Plan periods of a fixed length; months and years step by the calendar.
FIXED = {"day": timedelta(days=1), "week": timedelta(weeks=1)}


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime

    def holds(self, at: datetime) -> bool:
        return self.start <= at < self.end


def calendar_period(now: datetime, unit: str) -> Period:
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return Period(day, day + timedelta(days=1))
    if unit == "week":  # ISO weeks start on Monday
        start = day - timedelta(days=day.weekday())
        return Period(start, start + timedelta(weeks=1))
    if unit == "year":
        start = day.replace(month=1, day=1)
        return Period(start, start.replace(year=start.year + 1))
    start = day.replace(day=1)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return Period(start, end)


def current_period(now: datetime, unit: str | None, sub_start: datetime | None, sub_end: datetime | None) -> Period:
    if sub_start is not None and sub_end is not None and sub_start <= now < sub_end:
        return Period(sub_start, sub_end)
    return calendar_period(now, unit or "month")


def minute_window(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


def _month_days(year: int, month: int) -> int:
    return _calendar.monthrange(year, month)[1]


def add_units(anchor: datetime, n: int, unit: str, day: int | None = None) -> datetime:
    """`anchor` moved by n plan periods; months land on `day` (default the anchor's), clamped to
    the month's length, as Stripe's billing cycle anchor does (Jan 31, Feb 28, Mar 31)."""
    if unit in FIXED:
        return anchor + n * FIXED[unit]
    months = n * (12 if unit == "year" else 1)
    y, m = divmod(anchor.month - 1 + months, 12)
    year, month = anchor.year + y, m + 1
    return anchor.replace(year=year, month=month, day=min(day or anchor.day, _month_days(year, month)))


def anchor_day(start: datetime | None, end: datetime, unit: str) -> int:
    """The day of the month Stripe renews on after the period [start, end).

    After a trial, a proration or an anchor reset, the next cycle is anchored on the period's
    end (Stripe's billing_cycle_anchor is the trial's end): a 14-day trial Dec 20 -> Jan 3
    renews Jan 3 -> Feb 3. Only a whole cycle clamped to a short month's last day hides a later
    anchor, which its start still carries: Jan 31 -> Feb 28 renews Feb 28 -> Mar 31 (and a year
    Feb 29 -> Feb 28 renews on the 29th in leap years)."""
    if (
        start is not None
        and unit not in FIXED
        and start.day > end.day
        and end.day == _month_days(end.year, end.month)
        and add_units(start, 1, unit, start.day) == end
    ):
        return start.day
    return end.day


def interval_after(start: datetime | None, end: datetime, unit: str, now: datetime) -> Period:
    """The renewal interval that holds `now` (>= end) of a subscription whose period [start, end)
    ended: the intervals Stripe will report, end -> end + 1 unit -> ..., anchored by `anchor_day`.
    The first interval starts exactly at `end`, so the result always holds `now`."""
    if now < end:
        raise ValueError("interval_after: now is before the period's end")
    day = anchor_day(start, end, unit)

    def boundary(n: int) -> datetime:
        return end if n == 0 else add_units(end, n, unit, day)

    if unit in FIXED:
        n = (now - end) // FIXED[unit]
    else:  # a close lower estimate from the months between, then step
        months = (now.year - end.year) * 12 + now.month - end.month
        n = max(0, (months // 12 if unit == "year" else months) - 1)
        while n > 0 and boundary(n) > now:
            n -= 1
    while boundary(n + 1) <= now:
        n += 1
    return Period(boundary(n), boundary(n + 1))
