"""Delivering alerts. Two short transactions around each POST, never a lock held across the
network: claim due deliveries (PostgreSQL: FOR UPDATE SKIP LOCKED, so several processes share
the work; SQLite: the single writer serializes claims) by pushing their next attempt out by a
lease; POST, signed per Standard Webhooks; record the attempt and the outcome. A process that
dies mid-POST leaves the lease to expire and the delivery is retried: at least once, with a
stable `webhook-id` per event so receivers drop duplicates.

Retries back off exponentially with jitter for at least 24 hours (MAX_ATTEMPTS); an endpoint
whose deliveries keep failing (DISABLE_AFTER consecutive failed attempts) is disabled with a
reason, and its pending deliveries wait until it is enabled again; the disable is told to the other
endpoints (a `webhook.endpoint_disabled` event) and recorded in the audit log."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import and_, insert, select, update
from sqlalchemy.engine import Connection, Engine
from standardwebhooks import Webhook

from app.alerts.emit import ENDPOINT_DISABLED, emit
from app.alerts.models import AlertEvent, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.audit.service import Target, append, row_snapshot
from app.core.clock import Clock
from app.core.db import connection_of_work
from app.core.sql import is_sqlite

log = logging.getLogger("meterkit.webhooks")

EVENT: Any = AlertEvent.__table__  # type: ignore[attr-defined]
ENDPOINT: Any = WebhookEndpoint.__table__  # type: ignore[attr-defined]
DELIVERY: Any = WebhookDelivery.__table__  # type: ignore[attr-defined]
ATTEMPT: Any = WebhookAttempt.__table__  # type: ignore[attr-defined]

BASE_DELAY = 5.0  # seconds before the first retry
MAX_DELAY = 3600.0
MAX_ATTEMPTS = 40  # 5 s doubling to an hour, then hourly: past 24 h even at the shortest jitter
DISABLE_AFTER = 50  # consecutive failed attempts of an endpoint
LEASE = timedelta(seconds=60)
TIMEOUT = 10.0


def backoff(attempts: int, rng: random.Random | None = None) -> timedelta:
    """Delay after the n-th failed attempt: exponential, capped, with +-20% jitter."""
    delay = min(BASE_DELAY * 2 ** (attempts - 1), MAX_DELAY)
    return timedelta(seconds=delay * (rng or random).uniform(0.8, 1.2))


def fan_out(engine: Engine, clock: Clock, limit: int = 200) -> int:
    """Turn new outbox rows into one delivery per subscribed, active endpoint."""
    with connection_of_work(engine) as conn:
        q = select(EVENT.c.id, EVENT.c.tenant_id, EVENT.c.type).where(EVENT.c.fanned_out.is_(False))
        q = q.order_by(EVENT.c.id).limit(limit)
        if not is_sqlite(conn):
            q = q.with_for_update(skip_locked=True)
        events = conn.execute(q).all()
        if not events:
            return 0
        endpoints = conn.execute(
            select(ENDPOINT.c.id, ENDPOINT.c.tenant_id, ENDPOINT.c.event_types).where(ENDPOINT.c.active.is_(True))
        ).all()
        now = clock.now()
        rows = [
            {
                "event_id": e.id,
                "endpoint_id": ep.id,
                "tenant_id": e.tenant_id,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for e in events
            for ep in endpoints
            if (ep.tenant_id is None or ep.tenant_id == e.tenant_id) and _subscribed(ep.event_types, e.type)
        ]
        if rows:
            conn.execute(insert(DELIVERY), rows)
        conn.execute(update(EVENT).where(EVENT.c.id.in_([e.id for e in events])).values(fanned_out=True))
        return len(rows)


def _subscribed(types: Any, event_type: str) -> bool:
    types = json.loads(types) if isinstance(types, str) else types
    return "*" in types or event_type in types


def _claim(engine: Engine, clock: Clock, limit: int) -> list[Any]:
    now = clock.now()
    with connection_of_work(engine) as conn:
        q = (
            select(
                DELIVERY.c.id,
                DELIVERY.c.event_id,
                DELIVERY.c.attempts,
                DELIVERY.c.tenant_id,
                ENDPOINT.c.id.label("endpoint_id"),
                ENDPOINT.c.url,
                ENDPOINT.c.secret,
                EVENT.c.payload,
                EVENT.c.created_at,
            )
            .join(ENDPOINT, ENDPOINT.c.id == DELIVERY.c.endpoint_id)
            .join(EVENT, EVENT.c.id == DELIVERY.c.event_id)
            .where(
                and_(
                    DELIVERY.c.status == "pending",
                    DELIVERY.c.next_attempt_at <= now,
                    ENDPOINT.c.active.is_(True),
                )
            )
            .order_by(DELIVERY.c.next_attempt_at, DELIVERY.c.id)
            .limit(limit)
        )
        if not is_sqlite(conn):
            q = q.with_for_update(of=DELIVERY, skip_locked=True)
        rows = conn.execute(q).all()
        if rows:
            conn.execute(
                update(DELIVERY).where(DELIVERY.c.id.in_([r.id for r in rows])).values(next_attempt_at=now + LEASE)
            )
        return list(rows)


def sign(secret: str, msg_id: str, at: datetime, body: str) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, at, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def deliver_due(engine: Engine, clock: Clock, client: httpx.Client, limit: int = 20) -> int:
    """POST every due delivery once; returns how many were attempted."""
    rows = _claim(engine, clock, limit)
    for r in rows:
        payload = json.loads(r.payload) if isinstance(r.payload, str) else r.payload
        body = json.dumps({"id": f"evt_{r.event_id}", **payload}, separators=(",", ":"))
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            # Signed with the wall clock at send time, not the injectable one: the receiver checks the
            # timestamp against its own clock (Standard Webhooks: within 5 minutes).
            headers = sign(r.secret, f"evt_{r.event_id}", datetime.now(UTC), body)
            resp = client.post(r.url, content=body, headers=headers)
            status = resp.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        _record(engine, clock, r, status, error, int((time.monotonic() - started) * 1000))
    return len(rows)


def _record(engine: Engine, clock: Clock, r: Any, status: int | None, error: str | None, ms: int) -> None:
    now = clock.now()
    with connection_of_work(engine) as conn:
        conn.execute(
            insert(ATTEMPT).values(
                delivery_id=r.id, tenant_id=r.tenant_id, at=now, status_code=status, error=error, duration_ms=ms
            )
        )
        attempts = r.attempts + 1
        if error is None:
            conn.execute(
                update(DELIVERY)
                .where(DELIVERY.c.id == r.id)
                .values(status="delivered", attempts=attempts, delivered_at=now, last_status=status, last_error=None)
            )
            conn.execute(update(ENDPOINT).where(ENDPOINT.c.id == r.endpoint_id).values(consecutive_failures=0))
            return
        dead = attempts >= MAX_ATTEMPTS
        conn.execute(
            update(DELIVERY)
            .where(DELIVERY.c.id == r.id)
            .values(
                status="dead" if dead else "pending",
                attempts=attempts,
                next_attempt_at=now + backoff(attempts),
                last_status=status,
                last_error=error,
            )
        )
        _endpoint_failed(conn, r.endpoint_id, now)


def _endpoint_failed(conn: Connection, endpoint_id: str, now: datetime) -> None:
    failures = conn.execute(
        update(ENDPOINT)
        .where(ENDPOINT.c.id == endpoint_id)
        .values(consecutive_failures=ENDPOINT.c.consecutive_failures + 1, updated_at=now)
        .returning(ENDPOINT.c.consecutive_failures)
    ).scalar_one()
    if failures >= DISABLE_AFTER:
        reason = f"disabled after {failures} consecutive failed deliveries"
        before = row_snapshot(conn, "webhook_endpoint", "id", endpoint_id)
        disabled = conn.execute(
            update(ENDPOINT)
            .where(and_(ENDPOINT.c.id == endpoint_id, ENDPOINT.c.active.is_(True)))
            .values(active=False, disabled_reason=reason)
            .returning(ENDPOINT.c.tenant_id, ENDPOINT.c.url)
        ).first()
        if disabled is None:
            return  # already disabled (by another worker's attempt, or by hand): noticed then, or not due
        log.warning("webhook endpoint %s %s", endpoint_id, reason)
        _notice_disabled(conn, endpoint_id, disabled.tenant_id, disabled.url, reason, failures, before, now)


def _notice_disabled(
    conn: Connection,
    endpoint_id: str,
    tenant_id: str | None,
    url: str,
    reason: str,
    failures: int,
    before: dict[str, Any] | None,
    now: datetime,
) -> None:
    """Exactly once per disable (the active flip above is the guard), in the same transaction: an
    outbox event for the endpoints that subscribe to it (the operator's, and the tenant's own for a
    tenant's endpoint; this one is inactive now), and an audit entry written by the server itself."""
    payload = {"endpointId": endpoint_id, "url": url, "reason": reason, "consecutiveFailures": failures}
    emit(conn, tenant_id, ENDPOINT_DISABLED, f"endpoint_disabled:{endpoint_id}:{now.isoformat()}", payload, now)
    target = Target("webhook_endpoint", endpoint_id, tenant_id=tenant_id)
    after = row_snapshot(conn, "webhook_endpoint", "id", endpoint_id)
    append(conn, None, now, "disableWebhookEndpoint", target, before, after, {"reason": reason}, role="server")


def replay(conn: Connection, delivery_id: int, now: datetime) -> bool:
    """Send a delivery again (delivered, dead or pending): due now, attempts kept in the log."""
    done = conn.execute(
        update(DELIVERY)
        .where(DELIVERY.c.id == delivery_id)
        .values(status="pending", next_attempt_at=now)
        .returning(DELIVERY.c.id)
    ).first()
    return done is not None


class DeliveryWorker:
    """A thread in the server process: fan out, deliver, sleep. Safe to run in several processes
    on PostgreSQL (claims skip rows another worker holds)."""

    def __init__(self, engine: Engine, clock: Clock, *, interval: float = 1.0) -> None:
        self.engine, self.clock, self.interval = engine, clock, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="meterkit-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=TIMEOUT + 5)

    def _run(self) -> None:
        with httpx.Client(timeout=TIMEOUT) as client:
            while not self._stop.is_set():
                try:
                    fan_out(self.engine, self.clock)
                    busy = deliver_due(self.engine, self.clock, client)
                except Exception:  # noqa: BLE001  (a worker must outlive one bad round; logged)
                    log.exception("webhook delivery round failed")
                    busy = 0
                if not busy:
                    self._stop.wait(self.interval)
