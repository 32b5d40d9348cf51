"""Usage over time, read from the hourly rollups (usage_rollup) that every charge and settle
upserts in its own transaction: one statement for any number of events and, through a
DataLoader, for a whole page of tenants. Days are sums of 24 UTC hours."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection

from app.catalog.repository import require_known
from app.core.clock import as_utc
from app.core.errors import ValidationFailed
from app.core.primitives import check_key
from app.metering.models import UsageRollup

ROLLUP: Any = UsageRollup.__table__  # type: ignore[attr-defined]

Interval = Literal["hour", "day"]
GroupBy = Literal["primitive", "key"] | None

STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# At most this many buckets per series: a month of hours, a year of days.
MAX_BUCKETS = {"hour": 31 * 24, "day": 366}


@dataclass(frozen=True)
class SeriesArgs:
    """A validated series request; hashable, so it can key a DataLoader with the tenant id."""

    start: datetime
    end: datetime  # exclusive
    interval: Interval
    primitive: str | None
    group_by: GroupBy


@dataclass
class Point:
    start: datetime
    primitive: str | None
    api_key_id: str | None
    quantity: int
    credits: int


def floor(at: datetime, interval: Interval) -> datetime:
    at = at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0) if interval == "day" else at


def series_args(
    start: datetime, end: datetime, interval: Interval, primitive: str | None, group_by: GroupBy
) -> SeriesArgs:
    """Bounds aligned to the interval (start floored, end rounded up), checked once for every list."""
    start, end = as_utc(start), as_utc(end)
    if end <= start:
        raise ValidationFailed("to must be later than from", field="to")
    if primitive is not None:
        check_key(primitive)  # well-formed; a key the catalog lacks simply matches nothing
    lo, hi = floor(start, interval), floor(end, interval)
    if hi < end:
        hi += STEP[interval]
    if (hi - lo) / STEP[interval] > MAX_BUCKETS[interval]:
        raise ValidationFailed(
            f"at most {MAX_BUCKETS[interval]} {interval}s per series: narrow from/to or use a longer interval",
            field="from",
        )
    return SeriesArgs(lo, hi, interval, primitive, group_by)


def _bucket(conn: Connection, interval: Interval) -> Any:
    if interval == "hour":
        return ROLLUP.c.hour_start
    if conn.dialect.name == "sqlite":
        return func.substr(ROLLUP.c.hour_start, 1, 10)  # naive-UTC text: the date part
    return func.date_trunc("day", func.timezone("UTC", ROLLUP.c.hour_start))


def _read_bucket(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):  # a date
        value = datetime(value.year, value.month, value.day)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def usage_series(conn: Connection, tenant_ids: Sequence[str], args: SeriesArgs) -> dict[str, list[Point]]:
    """Every bucket of [start, end) for each tenant (zeros included), per group when grouped."""
    bucket = _bucket(conn, args.interval).label("bucket")
    dim = {"primitive": ROLLUP.c.primitive, "key": ROLLUP.c.api_key_id}.get(args.group_by or "")
    cols = [ROLLUP.c.tenant_id, bucket] + ([dim.label("dim")] if dim is not None else [])
    cond = [
        ROLLUP.c.tenant_id.in_(list(tenant_ids)),
        ROLLUP.c.hour_start >= args.start,
        ROLLUP.c.hour_start < args.end,
    ]
    if args.primitive is not None:
        require_known(conn, args.primitive)
        cond.append(ROLLUP.c.primitive == args.primitive)
    q = select(*cols, func.sum(ROLLUP.c.quantity), func.sum(ROLLUP.c.credits)).where(and_(*cond)).group_by(*cols)
    found: dict[str, dict[tuple[datetime, str | None], tuple[int, int]]] = {t: {} for t in tenant_ids}
    for row in conn.execute(q):
        group = row[2] if dim is not None else None
        found[row[0]][(_read_bucket(row[1]), group)] = (int(row[-2]), int(row[-1]))
    steps = int((args.end - args.start) / STEP[args.interval])
    starts = [args.start + i * STEP[args.interval] for i in range(steps)]
    out: dict[str, list[Point]] = {}
    for tid, cells in found.items():
        groups = sorted({g for _, g in cells}, key=lambda g: g or "") if dim is not None else [None]
        points = []
        for at in starts:  # time-major: each bucket's groups side by side (stacked bars)
            for group in groups:
                qty, credits = cells.get((at, group), (0, 0))
                points.append(
                    Point(
                        start=at,
                        primitive=group if args.group_by == "primitive" else args.primitive,
                        api_key_id=(group or None) if args.group_by == "key" else None,
                        quantity=qty,
                        credits=credits,
                    )
                )
        out[tid] = points
    return out
