"""The webhook inbox: one row per Stripe event id, written in the transaction of its effect.

`claim` inserts with ON CONFLICT DO NOTHING (both SQLite and PostgreSQL): the first
transaction to insert the id owns the event; a concurrent one waits on the unique index
(PostgreSQL) or on BEGIN IMMEDIATE (SQLite) and then sees a conflict, i.e. a duplicate.
If the owning transaction rolls back, its claim goes with it and a redelivery can apply."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from app.core.clock import Clock
from app.integrations.stripe.models import StripeEvent

EVENT: Any = StripeEvent.__table__  # type: ignore[attr-defined]


def seen(session: Session, event_id: str) -> bool:
    return session.execute(select(EVENT.c.id).where(EVENT.c.id == event_id)).first() is not None


def claim(
    session: Session, clock: Clock, *, event_id: str, type_: str, created: int, organization_id: str | None = None
) -> bool:
    """True if this transaction now owns the event; False if it was already recorded."""
    conn = session.connection()
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(EVENT)
        .values(
            id=event_id,
            type=type_,
            created=created,
            organization_id=organization_id,
            outcome="processing",
            processed_at=clock.now(),
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(EVENT.c.id)
    )
    # RETURNING, not rowcount: psycopg reports no reliable rowcount for this statement.
    return conn.execute(stmt).first() is not None


def finish(session: Session, event_id: str, *, tenant_id: str | None, outcome: str) -> None:
    session.connection().execute(
        update(EVENT).where(EVENT.c.id == event_id).values(tenant_id=tenant_id, outcome=outcome)
    )


def page(
    session: Session, *, outcome: str | None, limit: int, before: tuple[datetime, str] | None
) -> list[StripeEvent]:
    """Recorded events, newest first (processed_at, then id), optionally of one outcome."""
    q = select(StripeEvent).order_by(col(StripeEvent.processed_at).desc(), col(StripeEvent.id).desc()).limit(limit)
    if outcome is not None:
        q = q.where(col(StripeEvent.outcome) == outcome)
    if before is not None:
        at, event_id = before
        q = q.where(
            or_(
                col(StripeEvent.processed_at) < at,
                and_(col(StripeEvent.processed_at) == at, col(StripeEvent.id) < event_id),
            )
        )
    return list(session.exec(q).all())
