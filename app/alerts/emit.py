"""Threshold crossings, detected inside the charge's transaction. The check is arithmetic on
numbers the charge already has; a statement runs only when a threshold is crossed, and the outbox
row commits or rolls back with the charge. The unique (tenant, dedupe_key) makes it fire once per
period and tenant, whatever the concurrency (the tenant's account lock already serializes them)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection

from app.core.sql import Sql, run, to_json, ts

QUOTA_THRESHOLDS = (50, 75, 90, 100)  # percent of a period's quota
QUOTA_EVENT = "quota.threshold"

_EMIT = Sql(
    """INSERT INTO alert_event (tenant_id, type, dedupe_key, payload, fanned_out, created_at)
       VALUES (:tid, :type, :key, :payload, :false, :now)
       ON CONFLICT (tenant_id, dedupe_key) DO NOTHING"""
)


def crossed(quota: int | None, before: int, after: int) -> list[int]:
    """The thresholds this call crossed: before < t% of quota <= after."""
    if not quota or after <= before:
        return []
    return [t for t in QUOTA_THRESHOLDS if before * 100 < t * quota <= after * 100]


def quota_crossings(
    conn: Connection,
    tenant_id: str,
    primitive: str,
    quota: int | None,
    before: int,
    after: int,
    period_start: datetime,
    period_end: datetime,
    now: datetime,
) -> None:
    for pct in crossed(quota, before, after):
        payload = {
            "type": QUOTA_EVENT,
            "tenantId": tenant_id,
            "primitive": primitive,
            "threshold": pct,
            "quota": quota,
            "used": after,
            "periodStart": period_start.isoformat(),
            "periodEnd": period_end.isoformat(),
            "at": now.isoformat(),
        }
        run(
            conn,
            _EMIT,
            {
                "tid": tenant_id,
                "type": QUOTA_EVENT,
                "key": f"quota:{primitive}:{period_start.isoformat()}:{pct}",
                "payload": to_json(payload),
                "false": False,
                "now": ts(conn, now),
            },
        )
