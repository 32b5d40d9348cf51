"""Holds past their expiry, expired by a background sweep (the delivery worker calls it), not
only by the tenant's next write: a tenant that stops writing still gets its reserved credits back
and its `hold.expired` alerts. Each tenant is its own short transaction through the same code as
a write's (Meter locks the account and expires its holds: the status flip is the guard, so a
hold expires exactly once whoever gets there first)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.engine import Engine

from app.core.auth import TenantScope
from app.core.clock import Clock
from app.core.db import connection_of_work
from app.live import notify as live
from app.metering.models import CreditHold
from app.metering.service import Meter

HOLD: Any = CreditHold.__table__  # type: ignore[attr-defined]
log = logging.getLogger("meterkit.holds")


def expire_due_holds(engine: Engine, clock: Clock, *, limit: int = 100) -> list[str]:
    """Expire the open holds past their expiry of up to `limit` tenants; the tenants swept."""
    now = clock.now()
    with connection_of_work(engine, write=False) as conn:
        due = and_(HOLD.c.status == "open", HOLD.c.expires_at <= now)
        tenants = [str(t) for t in conn.execute(select(HOLD.c.tenant_id).where(due).distinct().limit(limit)).scalars()]
    swept = []
    for tenant_id in tenants:
        try:
            with connection_of_work(engine) as conn:
                # The account lock is taken here; a tenant with credits held has its expired holds
                # freed by Meter itself, holds of free primitives (nothing reserved) by the call below.
                meter = Meter(conn, clock, TenantScope(tenant_id), negative_buffer=0)
                meter._expire_holds()
                live.publish(conn, live.balance_moved(tenant_id))  # available moved: subscribers look again
        except Exception:  # noqa: BLE001  (one tenant's failure leaves the others' holds to expire)
            log.exception("expiring the holds of tenant %s failed", tenant_id)
            continue
        swept.append(tenant_id)
    return swept
