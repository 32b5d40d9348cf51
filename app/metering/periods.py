"""Billing periods. The period is the subscription's current period when there is one
and `now` falls inside it; otherwise the calendar period of the plan in UTC."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime


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
