"""Usage reads over GraphQL: the event history (a connection) and the series over time (from the
hourly rollups). Both exist on Query for the tenant in scope and on Tenant for operators, and
both go through the request's DataLoaders, so a page of tenants costs a constant number of
statements whatever its size."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Self

import strawberry

from app.core import public_ids
from app.core.paging import HistoryFilter, decode_id_cursor, encode_id_cursor
from app.graphql.context import Context, Info
from app.graphql.pagination import After, Connection, Days, First, From, To, connection, history_args
from app.graphql.rows import FromRow
from app.graphql.scalars import Credits
from app.graphql.types import ApiKey
from app.metering import repository
from app.metering.series import SeriesArgs, series_args, usage_series
from app.tenants.repository import ApiKeyRepository

_CURSOR = "use"


async def _visible_key(ctx: Context, tenant_id: str, key_id: str | None) -> Any:
    """The key row behind a usage record, if the caller may see it: an operator sees every key; a
    tenant sees its own keys, not the operator key that charged on its behalf."""
    if key_id is None:
        return None
    row = await ctx.loaders.custom("api_keys", lambda s, ids: ApiKeyRepository(s).get_many(ids)).load(key_id)
    if row is None or (not ctx.is_operator and row.tenant_id != tenant_id):
        return None
    return row


async def _key_id_field(ctx: Context, tenant_id: str, key_id: str | None) -> strawberry.ID | None:
    # An operator sees every key, so the id needs no row: no loader, whose batches could split
    # across the event loop's turns and make a page's statement count depend on timing.
    if ctx.is_operator:
        return strawberry.ID(key_id) if key_id else None  # "" in rollups: a call without a key
    row = await _visible_key(ctx, tenant_id, key_id)
    return strawberry.ID(row.id) if row is not None else None


async def _key_field(ctx: Context, tenant_id: str, key_id: str | None) -> ApiKey | None:
    row = await _visible_key(ctx, tenant_id, key_id)
    return ApiKey.from_row(row) if row is not None else None


@strawberry.type(description="One metered call, as recorded.")
class UsageEvent(FromRow):
    id: strawberry.ID
    kind: str = strawberry.field(description="charge | settle")
    primitive: str
    quantity: int
    credits_used: Credits
    reference: str | None
    connection: str | None = strawberry.field(description="The connection the call named, if any")
    idempotency_key: str
    created_at: datetime
    tenant_id: strawberry.Private[str]
    key_id: strawberry.Private[str | None]

    @strawberry.field(description="The key that made the call (null: no key, or not one of the caller's).")
    async def api_key_id(self, info: Info) -> strawberry.ID | None:
        return await _key_id_field(info.context, self.tenant_id, self.key_id)

    @strawberry.field
    async def api_key(self, info: Info) -> ApiKey | None:
        return await _key_field(info.context, self.tenant_id, self.key_id)

    @classmethod
    def from_row(cls, r: Any, /, **given: Any) -> Self:
        return super().from_row(r, credits_used=r.credits, key_id=r.api_key_id, **given)


@strawberry.type
class UsageEventConnection(Connection[UsageEvent]):
    pass


@strawberry.enum
class UsageInterval(Enum):
    HOUR = "hour"
    DAY = "day"


@strawberry.enum
class UsageGroupBy(Enum):
    PRIMITIVE = "primitive"
    KEY = "key"


@strawberry.type(description="Usage in one bucket (UTC hour or day) of a series; zero when nothing was used.")
class UsagePoint(FromRow):
    start: datetime
    primitive: str | None = strawberry.field(description="Set when grouped by primitive or filtered to one.")
    quantity: int
    credits: Credits
    tenant_id: strawberry.Private[str]
    key_id: strawberry.Private[str | None]

    @strawberry.field(description="Grouped by key: the key that made the calls (null: no key).")
    async def api_key_id(self, info: Info) -> strawberry.ID | None:
        return await _key_id_field(info.context, self.tenant_id, self.key_id)

    @strawberry.field(description="Grouped by key: the key that made the calls (null: no key).")
    async def api_key(self, info: Info) -> ApiKey | None:
        return await _key_field(info.context, self.tenant_id, self.key_id)


# ---- resolvers shared by Query (tenant in scope) and Tenant (operators, batched) ---------------


async def resolve_usage_history(
    ctx: Context,
    tenant_id: str,
    first: int,
    after: str | None,
    days: int | None,
    start: datetime | None,
    end: datetime | None,
    primitive: str | None,
    api_key_id: str | None,
) -> UsageEventConnection:
    first, filt = history_args(first, days, start, end, primitive, api_key_id)
    ids = public_ids.codec(ctx.engine)
    before = decode_id_cursor(_CURSOR, after, ids, public_ids.EVENT) if after is not None else None

    now = ctx.clock.now()

    def fetch(s: Any, keys: list[tuple[str, HistoryFilter, int, int | None]]) -> dict[Any, list[Any]]:
        out: dict[Any, list[Any]] = {}
        for args in {k[1:] for k in keys}:  # one statement per distinct arguments (one, on a page)
            ids = [k[0] for k in keys if k[1:] == args]
            for tid, rows in repository.usage_history(s.connection(), ids, now, *args).items():
                out[(tid, *args)] = rows
        return out

    rows = await ctx.loaders.custom("usage_history", fetch).load((tenant_id, filt, first + 1, before))
    return connection(
        UsageEventConnection,
        rows or [],
        first,
        lambda r: encode_id_cursor(_CURSOR, ids, public_ids.EVENT, r.id),
        lambda r: UsageEvent.from_row(r, id=strawberry.ID(ids.encode(public_ids.EVENT, r.id))),
    )


async def resolve_usage_series(
    ctx: Context,
    tenant_id: str,
    start: datetime,
    end: datetime,
    interval: UsageInterval,
    primitive: str | None,
    group_by: UsageGroupBy | None,
) -> list[UsagePoint]:
    args = series_args(start, end, interval.value, primitive, group_by.value if group_by else None)

    def fetch(s: Any, keys: list[tuple[str, SeriesArgs]]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for a in {k[1] for k in keys}:
            for tid, points in usage_series(s.connection(), [k[0] for k in keys if k[1] == a], a).items():
                out[(tid, a)] = points
        return out

    points = await ctx.loaders.custom("usage_series", fetch).load((tenant_id, args))
    return [UsagePoint.from_row(p, tenant_id=tenant_id, key_id=p.api_key_id) for p in points or []]


SeriesFrom = Annotated[datetime, strawberry.argument(name="from", description="Start (floored to the interval).")]
SeriesTo = Annotated[datetime, strawberry.argument(name="to", description="End, exclusive (rounded up).")]


@strawberry.type
class UsageQuery:
    @strawberry.field(
        description="Metered calls of the tenant in scope, newest first (REST: GET /v1/usage), "
        "filtered by time (days, or from/to), primitive and key."
    )
    async def usage_history(
        self,
        info: Info,
        first: First = 50,
        after: After = None,
        days: Days = None,
        from_: From = None,
        to: To = None,
        primitive: str | None = None,
        api_key_id: strawberry.ID | None = None,
    ) -> UsageEventConnection:
        ctx = info.context
        scope = ctx.require_scope()
        key = str(api_key_id) if api_key_id is not None else None
        return await resolve_usage_history(ctx, scope.tenant_id, first, after, days, from_, to, primitive, key)

    @strawberry.field(
        description="Usage of the tenant in scope over time: one point per UTC hour or day in [from, to), "
        "zeros included, optionally one primitive, grouped by primitive or key. Read from hourly "
        "rollups kept with each charge: the cost does not grow with the number of events."
    )
    async def usage_series(
        self,
        info: Info,
        from_: SeriesFrom,
        to: SeriesTo,
        interval: UsageInterval = UsageInterval.DAY,
        primitive: str | None = None,
        group_by: UsageGroupBy | None = None,
    ) -> list[UsagePoint]:
        ctx = info.context
        scope = ctx.require_scope()
        return await resolve_usage_series(ctx, scope.tenant_id, from_, to, interval, primitive, group_by)
