"""Threshold crossings, detected inside the charge's transaction. The check is arithmetic on
numbers the charge already has; a statement runs only when a threshold is crossed, and the outbox
row commits or rolls back with the charge. The unique (tenant, dedupe_key) makes it fire once per
period and tenant, whatever the concurrency (the tenant's account lock already serializes them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from app.core.sql import Sql, run, to_json, ts

QUOTA_THRESHOLDS = (50, 75, 90, 100)  # percent of a period's quota, unless a policy says otherwise
QUOTA_EVENT = "quota.threshold"
BALANCE_LOW = "balance.low"
BALANCE_EXHAUSTED = "balance.exhausted"
HOLD_EXPIRED = "hold.expired"
SUBSCRIPTION_CHANGED = "subscription.status_changed"
CREDITS_GRANTED = "credits.granted"
ENDPOINT_DISABLED = "webhook.endpoint_disabled"  # an endpoint failed too long: told to the others
EVENT_TYPES = (
    QUOTA_EVENT,
    BALANCE_LOW,
    BALANCE_EXHAUSTED,
    HOLD_EXPIRED,
    SUBSCRIPTION_CHANGED,
    CREDITS_GRANTED,
    ENDPOINT_DISABLED,
)

_EMIT = Sql(
    """INSERT INTO alert_event (tenant_id, type, dedupe_key, payload, fanned_out, created_at)
       VALUES (:tid, :type, :key, :payload, :false, :now)
       ON CONFLICT (tenant_id, dedupe_key) DO NOTHING"""
)


def crossed(quota: int | None, before: int, after: int, percents: tuple[int, ...] = QUOTA_THRESHOLDS) -> list[int]:
    """The thresholds this call crossed: before < t% of quota <= after."""
    if not quota or after <= before:
        return []
    return [t for t in percents if before * 100 < t * quota <= after * 100]


def emit(
    conn: Connection, tenant_id: str | None, type_: str, dedupe_key: str, payload: dict[str, Any], now: datetime
) -> None:
    """One outbox row, in the caller's transaction; a second with the same key is a no-op (for a
    tenant's events: NULLs never conflict, so an event of no tenant relies on its caller's guard)."""
    body = {"type": type_, "tenantId": tenant_id, **payload, "at": now.isoformat()}
    run(
        conn,
        _EMIT,
        {
            "tid": tenant_id,
            "type": type_,
            "key": dedupe_key,
            "payload": to_json(body),
            "false": False,
            "now": ts(conn, now),
        },
    )


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
    percents: tuple[int, ...] = QUOTA_THRESHOLDS,
) -> None:
    for pct in crossed(quota, before, after, percents):
        payload = {
            "primitive": primitive,
            "threshold": pct,
            "quota": quota,
            "used": after,
            "periodStart": period_start.isoformat(),
            "periodEnd": period_end.isoformat(),
        }
        emit(conn, tenant_id, QUOTA_EVENT, f"quota:{primitive}:{period_start.isoformat()}:{pct}", payload, now)


def balance_low(
    conn: Connection, tenant_id: str, floor: int, before: int, after: int, period_start: datetime, now: datetime
) -> None:
    """Available credits went below the policy's floor: once per period."""
    if before >= floor > after:
        payload = {"lowBalance": floor, "available": after, "periodStart": period_start.isoformat()}
        emit(conn, tenant_id, BALANCE_LOW, f"balance_low:{period_start.isoformat()}", payload, now)
