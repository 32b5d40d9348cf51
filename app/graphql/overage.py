"""Operators see the overage reports owed to Stripe: what was sent, what is still pending and why."""

from __future__ import annotations

from datetime import datetime

import strawberry
from sqlalchemy import and_, select

from app.core.errors import ValidationFailed
from app.core.paging import check_first, decode_cursor, encode_cursor
from app.graphql.context import Info
from app.graphql.pagination import After, Connection, First, connection
from app.graphql.rows import FromRow
from app.overage.service import REPORT

_CURSOR = "overage"
STATUSES = ("pending", "reported")


@strawberry.type(description="A tenant's overage of one primitive in one closed period, reported to Stripe once.")
class OverageReport(FromRow):
    tenant_id: strawberry.ID
    primitive: str
    period_start: datetime
    period_end: datetime
    quantity: int = strawberry.field(description="Units past the quota, sent as the meter event's value.")
    price_id: str
    identifier: str = strawberry.field(description="The meter event's identifier and idempotency key.")
    status: str = strawberry.field(description="pending | reported")
    attempts: int
    last_error: str | None
    reported_at: datetime | None


@strawberry.type
class OverageReportConnection(Connection[OverageReport]):
    pass


@strawberry.type
class OverageQuery:
    @strawberry.field(
        description='Overage reports to Stripe, newest first; `status: "pending"` lists what is still owed '
        "(repaired by the next `meterkit stripe reconcile`)."
    )
    async def overage_reports(
        self, info: Info, first: First = 50, after: After = None, status: str | None = None
    ) -> OverageReportConnection:
        check_first(first)
        if status is not None and status not in STATUSES:
            raise ValidationFailed("status must be pending or reported", field="status")
        cond = [] if status is None else [REPORT.c.status == status]
        if after is not None:
            cond.append(REPORT.c.identifier < decode_cursor(_CURSOR, after))
        q = select(REPORT).where(and_(True, *cond)).order_by(REPORT.c.identifier.desc()).limit(first + 1)
        rows = await info.context.read(lambda s: s.connection().execute(q).all())
        return connection(
            OverageReportConnection, rows, first, lambda r: encode_cursor(_CURSOR, r.identifier), OverageReport.from_row
        )
