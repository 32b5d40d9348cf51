"""The ledger read over GraphQL: a tenant's balance (reserved, buckets in burn order) and its entries,
newest first. Tenant.credits and Tenant.creditHistory, Query.status and creditHistory, and the
balanceChanged subscription answer with these types."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry

from app.core import public_ids
from app.core.paging import HistoryFilter, decode_id_cursor, encode_id_cursor
from app.credits import service
from app.graphql.context import Context
from app.graphql.pagination import Connection, connection, history_args
from app.graphql.rows import FromRow
from app.graphql.scalars import Credits


@strawberry.type
class CreditBucket(FromRow):
    id: strawberry.ID
    source: str = strawberry.field(description="signup | plan | purchase | adjustment | reversal")
    granted: Credits
    remaining: Credits
    expires_at: datetime | None
    created_at: datetime


@strawberry.type
class CreditBalance(FromRow):
    balance: Credits = strawberry.field(
        description="Sum of the ledger, less credits expired by now (exact at read time)."
    )
    reserved: Credits = strawberry.field(description="Held by open reservations.")
    available: Credits = strawberry.field(description="balance - reserved")
    buckets: list[CreditBucket] = strawberry.field(description="Grants with credits left, in burn order.")


def balance_view(s: service.CreditSummary) -> CreditBalance:
    return CreditBalance.from_row(s, buckets=[CreditBucket.from_row(b) for b in s.buckets])


async def resolve_credits(ctx: Context, tenant_id: str) -> CreditBalance:
    """Tenant.credits through a per-request DataLoader: a page of tenants costs two statements."""
    now = ctx.clock.now()

    def fetch(session: Any, keys: list[str]) -> dict[str, service.CreditSummary]:
        return service.summaries(session, keys, now)

    summary = await ctx.loaders.custom("credits", fetch).load(tenant_id)
    return balance_view(summary or service.CreditSummary(0, 0))


@strawberry.type
class CreditEntry(FromRow):
    id: strawberry.ID
    kind: str = strawberry.field(description="grant | debit | reversal | expiry")
    action: str = strawberry.field(description="signup, plan, purchase, adjustment, a primitive name, expiry...")
    amount: Credits
    balance_after: Credits
    reference: str | None
    created_at: datetime


@strawberry.type
class CreditEntryConnection(Connection[CreditEntry]):
    pass


_CURSOR = "le"


async def resolve_credit_history(
    ctx: Context,
    tenant_id: str,
    first: int,
    after: str | None,
    days: int | None,
    start: datetime | None,
    end: datetime | None,
    primitive: str | None,
) -> CreditEntryConnection:
    """creditHistory and Tenant.creditHistory: a DataLoader, so a page of tenants costs one statement."""
    first, filt = history_args(first, days, start, end, primitive)
    ids = public_ids.codec(ctx.engine)
    before = decode_id_cursor(_CURSOR, after, ids, public_ids.ENTRY) if after is not None else None

    now = ctx.clock.now()

    def fetch(s: Any, keys: list[tuple[str, HistoryFilter, int, int | None]]) -> dict[Any, list[Any]]:
        out: dict[Any, list[Any]] = {}
        for args in {k[1:] for k in keys}:
            for tid, rows in service.history(s, [k[0] for k in keys if k[1:] == args], now, *args).items():
                out[(tid, *args)] = rows
        return out

    rows = await ctx.loaders.custom("credit_history", fetch).load((tenant_id, filt, first + 1, before))
    return connection(
        CreditEntryConnection,
        rows or [],
        first,
        lambda r: encode_id_cursor(_CURSOR, ids, public_ids.ENTRY, r.id),
        lambda r: CreditEntry.from_row(r, id=strawberry.ID(ids.encode(public_ids.ENTRY, r.id))),
    )
