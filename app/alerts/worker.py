"""Delivering alerts. Two short transactions around each POST, never a lock held across the
network: claim due deliveries (PostgreSQL: FOR UPDATE SKIP LOCKED, so several processes share
the work; SQLite: the single writer serializes claims) by leasing them (their next attempt pushed
out by the lease); POST, signed per Standard Webhooks; record the attempt and the outcome. A
process that dies mid-POST leaves the lease to expire and the delivery is retried: at least once,
with a stable `webhook-id` per event so receivers drop duplicates.

No endpoint can hold or poison the others (issue 17):
- Any failure of one delivery (an exception of any kind, a refused address, the deadline) is that
  delivery's failed attempt, never the round's: the others proceed.
- Each POST has one wall-clock deadline (resolve, connect, send, status line and headers), not a
  timeout per read: a receiver trickling bytes is cut at it. The answer's body is never read.
- Deliveries run concurrently (DeliveryConfig.concurrency) and fairly: a claim takes due
  deliveries round-robin across endpoints, at most `per_endpoint` of one endpoint in flight, so
  a slow endpoint ties up its own slots only.
- Addresses that are not public are refused on the address connected to (app/alerts/egress.py).
- The lease is the record's fence. A claim writes `next_attempt_at = now + lease`; that value is
  the claim's token, since a later claim of the same row needs now >= it and so writes a later
  one. The record updates the delivery only where it is still pending with our token, and writes
  the attempt only then: a worker whose lease ran out mid-POST (paused, or slower than the lease)
  records nothing, so an outcome is never applied twice, and a delivery recorded as delivered is
  never claimed (nor sent) again. A POST starts only while the lease outlives the deadline.

Retries back off exponentially with jitter for at least 24 hours (MAX_ATTEMPTS); an endpoint
whose deliveries keep failing (DISABLE_AFTER consecutive failed attempts) is disabled with a
reason, and its pending deliveries wait until it is enabled again; the disable is told to the other
endpoints (a `webhook.endpoint_disabled` event) and recorded in the audit log. The worker also
expires holds past their expiry (app/metering/holds.py) every `hold_sweep` seconds."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, column, func, insert, select, table, update
from sqlalchemy.engine import Connection, Engine
from standardwebhooks import Webhook

from app.alerts import egress
from app.alerts.emit import ENDPOINT_DISABLED, emit
from app.alerts.models import AlertEvent, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.audit.service import Target, append, row_snapshot
from app.core import public_ids
from app.core.clock import Clock
from app.core.db import connection_of_work
from app.core.public_ids import ALERT, IdCodec
from app.core.sql import is_sqlite
from app.metering.holds import expire_due_holds
from app.observability import metrics

log = logging.getLogger("meterkit.webhooks")

EVENT: Any = AlertEvent.__table__  # type: ignore[attr-defined]
ENDPOINT: Any = WebhookEndpoint.__table__  # type: ignore[attr-defined]
DELIVERY: Any = WebhookDelivery.__table__  # type: ignore[attr-defined]
ATTEMPT: Any = WebhookAttempt.__table__  # type: ignore[attr-defined]
TENANT: Any = table("tenant", column("id", String), column("organization_id", String))

BASE_DELAY = 5.0  # seconds before the first retry
MAX_DELAY = 3600.0
MAX_ATTEMPTS = 40  # 5 s doubling to an hour, then hourly: past 24 h even at the shortest jitter
DISABLE_AFTER = 50  # consecutive failed attempts of an endpoint
MAX_ERROR = 500  # webhook_attempt.error


@dataclass(frozen=True)
class DeliveryConfig:
    """The delivery settings (app/settings.py, METERKIT_WEBHOOK_*)."""

    allow_private: bool = False
    deadline: float = 10.0  # seconds, wall clock, per POST
    concurrency: int = 16  # POSTs in flight at once in one worker
    per_endpoint: int = 2  # of them to one endpoint
    lease: float = 60.0  # seconds a claim holds a delivery; more than the deadline
    hold_sweep: float = 30.0  # seconds between expiring holds past their expiry (0: never)

    def __post_init__(self) -> None:
        if not self.lease > self.deadline > 0 or self.concurrency < 1 or self.per_endpoint < 1:
            raise ValueError("need lease > deadline > 0, concurrency >= 1 and per_endpoint >= 1")

    @classmethod
    def from_settings(cls, settings: Any) -> DeliveryConfig:
        return cls(
            allow_private=settings.webhook_allow_private,
            deadline=settings.webhook_deadline_seconds,
            concurrency=settings.webhook_concurrency,
            per_endpoint=settings.webhook_per_endpoint,
            lease=settings.webhook_lease_seconds,
            hold_sweep=settings.hold_sweep_seconds,
        )


@dataclass(frozen=True)
class Claimed:
    """A leased delivery and what sending it needs; `leased_until` is the claim's fence token."""

    id: int
    event_id: int
    attempts: int
    tenant_id: str | None
    endpoint_id: str
    url: str
    secret: str
    payload: Any
    leased_until: datetime


@dataclass(frozen=True)
class Outcome:
    status: int | None
    error: str | None  # None: delivered (2xx)
    ms: int


def backoff(attempts: int, rng: random.Random | None = None) -> timedelta:
    """Delay after the n-th failed attempt: exponential, capped, with +-20% jitter."""
    delay = min(BASE_DELAY * 2 ** (attempts - 1), MAX_DELAY)
    return timedelta(seconds=delay * (rng or random).uniform(0.8, 1.2))


def fan_out(engine: Engine, clock: Clock, limit: int = 200) -> int:
    """Turn new outbox rows into one delivery per subscribed, active endpoint."""
    with connection_of_work(engine) as conn:
        # The event's tenant's organization, for organizations' endpoints (a subquery: no join to lock).
        org = select(TENANT.c.organization_id).where(TENANT.c.id == EVENT.c.tenant_id).scalar_subquery()
        q = select(EVENT.c.id, EVENT.c.tenant_id, EVENT.c.type, org.label("org")).where(EVENT.c.fanned_out.is_(False))
        q = q.order_by(EVENT.c.id).limit(limit)
        if not is_sqlite(conn):
            q = q.with_for_update(skip_locked=True)
        events = conn.execute(q).all()
        if not events:
            return 0
        endpoints = conn.execute(
            select(ENDPOINT.c.id, ENDPOINT.c.tenant_id, ENDPOINT.c.organization_id, ENDPOINT.c.event_types).where(
                ENDPOINT.c.active.is_(True)
            )
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
            if _hears(ep, e) and _subscribed(ep.event_types, e.type)
        ]
        if rows:
            conn.execute(insert(DELIVERY), rows)
        conn.execute(update(EVENT).where(EVENT.c.id.in_([e.id for e in events])).values(fanned_out=True))
        return len(rows)


def _hears(ep: Any, e: Any) -> bool:
    """A tenant's endpoint hears its tenant; an organization's every tenant of it; the platform's all."""
    if ep.tenant_id is not None:
        return bool(ep.tenant_id == e.tenant_id)
    return ep.organization_id is None or (e.tenant_id is not None and ep.organization_id == e.org)


def _subscribed(types: Any, event_type: str) -> bool:
    types = json.loads(types) if isinstance(types, str) else types
    return "*" in types or event_type in types


def claim(
    engine: Engine, clock: Clock, config: DeliveryConfig, limit: int, busy: Mapping[str, int] | None = None
) -> list[Claimed]:
    """Lease up to `limit` due deliveries, round-robin across endpoints: the first due delivery of
    every endpoint, then the second, ...; no endpoint past `per_endpoint` counting the ones this
    worker has in flight (`busy`). One transaction: rank (no lock: PostgreSQL refuses FOR UPDATE
    with a window function), then lock the chosen rows still due (SKIP LOCKED) and lease them."""
    if limit <= 0:
        return []
    busy = busy or {}
    now = clock.now()
    leased_until = now + timedelta(seconds=config.lease)
    due = and_(DELIVERY.c.status == "pending", DELIVERY.c.next_attempt_at <= now, ENDPOINT.c.active.is_(True))
    with connection_of_work(engine) as conn:
        rank = func.row_number().over(
            partition_by=DELIVERY.c.endpoint_id, order_by=(DELIVERY.c.next_attempt_at, DELIVERY.c.id)
        )
        ranked = (
            select(DELIVERY.c.id, DELIVERY.c.endpoint_id, DELIVERY.c.next_attempt_at, rank.label("rank"))
            .join(ENDPOINT, ENDPOINT.c.id == DELIVERY.c.endpoint_id)
            .where(due)
            .subquery()
        )
        candidates = conn.execute(
            select(ranked.c.id, ranked.c.endpoint_id)
            .where(ranked.c.rank <= config.per_endpoint)
            .order_by(ranked.c.rank, ranked.c.next_attempt_at, ranked.c.id)
            .limit(limit + config.per_endpoint * len(busy))
        ).all()
        room: dict[str, int] = {}
        order: list[int] = []
        for c in candidates:
            left = room.setdefault(c.endpoint_id, config.per_endpoint - busy.get(c.endpoint_id, 0))
            if left > 0 and len(order) < limit:
                order.append(c.id)
                room[c.endpoint_id] = left - 1
        if not order:
            return []
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
            )
            .join(ENDPOINT, ENDPOINT.c.id == DELIVERY.c.endpoint_id)
            .join(EVENT, EVENT.c.id == DELIVERY.c.event_id)
            .where(and_(DELIVERY.c.id.in_(order), due))  # still due: another worker may have just leased it
        )
        if not is_sqlite(conn):
            q = q.with_for_update(of=DELIVERY, skip_locked=True)
        rows = {r.id: r for r in conn.execute(q)}
        if rows:
            conn.execute(update(DELIVERY).where(DELIVERY.c.id.in_(list(rows))).values(next_attempt_at=leased_until))
    return [
        Claimed(
            id=r.id,
            event_id=r.event_id,
            attempts=r.attempts,
            tenant_id=r.tenant_id,
            endpoint_id=r.endpoint_id,
            url=r.url,
            secret=r.secret,
            payload=r.payload,
            leased_until=leased_until,
        )
        for r in (rows[i] for i in order if i in rows)
    ]


def sign(secret: str, msg_id: str, at: datetime, body: str) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, at, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def _printable(text: str) -> str:
    """An error as stored and shown: no control characters (PostgreSQL text refuses NUL), bounded."""
    return "".join(c if c.isprintable() else "?" for c in text)[:MAX_ERROR]


class Sender:
    """POSTs one delivery with the guarded client; never raises: every failure is an Outcome."""

    def __init__(self, config: DeliveryConfig, ids: IdCodec | None = None) -> None:
        """`ids`: the install's public-id codec (app/core/public_ids.py): an alert's webhook id is
        opaque, not alert_event's counter, which told a tenant's receiver the whole system's alert
        volume. None: a fixed codec (tests that send without a database)."""
        self.config = config
        self.ids = ids or IdCodec(b"\0" * 32)
        self.client = egress.client(
            allow_private=config.allow_private, deadline=config.deadline, max_connections=config.concurrency
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(self, r: Claimed, send_by: float | None = None) -> Outcome:
        """`send_by`: the time.monotonic() after which the request must not be written (the lease)."""
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        guard = egress.SEND_BY.set(send_by)
        try:
            payload = json.loads(r.payload) if isinstance(r.payload, str) else r.payload
            msg_id = self.ids.encode(ALERT, r.event_id)
            body = json.dumps({"id": msg_id, **payload}, separators=(",", ":"))
            # Signed with the wall clock at send time, not the injectable one: the receiver checks the
            # timestamp against its own clock (Standard Webhooks: within 5 minutes).
            headers = sign(r.secret, msg_id, datetime.now(UTC), body)
            async with asyncio.timeout(self.config.deadline):
                # Streamed and closed unread: only the status counts, and a huge or endless body
                # costs nothing.
                async with self.client.stream("POST", r.url, content=body, headers=headers) as resp:
                    status = resp.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except egress.BlockedAddress:
            error = egress.REFUSED
        except egress.LeaseExpired as exc:
            error = str(exc)
        except TimeoutError:
            error = f"Timeout: no complete answer within the {self.config.deadline:g} s deadline"
        except Exception as exc:  # noqa: BLE001  (any failure is this delivery's failed attempt)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            egress.SEND_BY.reset(guard)
        if status is not None and 200 <= status < 300:
            error = None  # answered 2xx: what went wrong after (closing the unread body) is no failure
        ms = int((time.monotonic() - started) * 1000)
        return Outcome(status, _printable(error) if error is not None else None, ms)


async def deliver_one(engine: Engine, clock: Clock, sender: Sender, r: Claimed) -> bool:
    """Send and record one claimed delivery; never raises. False: nothing was recorded (the lease
    would run out before the deadline, or ran out and another claim owns the delivery now)."""
    try:
        spare = (r.leased_until - clock.now()).total_seconds() - sender.config.deadline
        if spare < 0:
            log.warning("webhook delivery %s: its lease would end before the deadline; left for the next claim", r.id)
            return False
        outcome = await sender.send(r, send_by=time.monotonic() + spare)
        applied = await asyncio.to_thread(record, engine, clock, r, outcome)
        if not applied:
            metrics.delivery("lost")
            log.warning("webhook delivery %s: lease lost while sending; its outcome was not recorded", r.id)
        return applied
    except Exception:  # noqa: BLE001  (the lease expires and the delivery is claimed again)
        log.exception("webhook delivery %s could not be recorded", r.id)
        return False


def deliver_due(engine: Engine, clock: Clock, config: DeliveryConfig | None = None, limit: int = 20) -> int:
    """One round: claim up to `limit` due deliveries (fairly), POST them concurrently (bounded),
    record each; returns how many were claimed. The worker thread does the same continuously."""
    return asyncio.run(_deliver_round(engine, clock, config or DeliveryConfig(), limit))


async def _deliver_round(engine: Engine, clock: Clock, config: DeliveryConfig, limit: int) -> int:
    rows = await asyncio.to_thread(claim, engine, clock, config, limit)
    if not rows:
        return 0
    sender = Sender(config, public_ids.codec(engine))
    slots = asyncio.Semaphore(config.concurrency)

    async def one(r: Claimed) -> None:
        async with slots:
            await deliver_one(engine, clock, sender, r)

    try:
        await asyncio.gather(*(one(r) for r in rows))
    finally:
        await sender.aclose()
    return len(rows)


def record(engine: Engine, clock: Clock, r: Claimed, outcome: Outcome) -> bool:
    """The attempt and its outcome, in one transaction, fenced by the claim's lease token: False
    (and nothing written) when the delivery is no longer ours."""
    now = clock.now()
    attempts = r.attempts + 1  # under the fence nobody else has recorded since our claim
    values: dict[str, Any]
    if outcome.error is None:
        values = {"status": "delivered", "delivered_at": now, "last_error": None}
    else:
        dead = attempts >= MAX_ATTEMPTS
        values = {
            "status": "dead" if dead else "pending",
            "next_attempt_at": now + backoff(attempts),
            "last_error": outcome.error,
        }
    values.update(attempts=attempts, last_status=outcome.status)
    ours = and_(DELIVERY.c.id == r.id, DELIVERY.c.status == "pending", DELIVERY.c.next_attempt_at == r.leased_until)
    with connection_of_work(engine) as conn:
        if conn.execute(update(DELIVERY).where(ours).values(**values).returning(DELIVERY.c.id)).first() is None:
            return False
        conn.execute(
            insert(ATTEMPT).values(
                delivery_id=r.id,
                tenant_id=r.tenant_id,
                at=now,
                status_code=outcome.status,
                error=outcome.error,
                duration_ms=outcome.ms,
            )
        )
        if outcome.error is None:
            conn.execute(update(ENDPOINT).where(ENDPOINT.c.id == r.endpoint_id).values(consecutive_failures=0))
        else:
            _endpoint_failed(conn, r.endpoint_id, now)
    metrics.delivery({"delivered": "delivered", "pending": "retry"}.get(values["status"], "dead"))
    return True


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
            .returning(ENDPOINT.c.tenant_id, ENDPOINT.c.organization_id, ENDPOINT.c.url)
        ).first()
        if disabled is None:
            return  # already disabled (by another worker's attempt, or by hand): noticed then, or not due
        log.warning("webhook endpoint %s %s", endpoint_id, reason)
        # An organization's endpoint: the notice goes to its own account (whose id is the organization's).
        told = disabled.tenant_id or disabled.organization_id
        _notice_disabled(conn, endpoint_id, told, disabled.url, reason, failures, before, now)


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
    """A thread in the server process (or `meterkit webhooks work`): an event loop that keeps up to
    `concurrency` deliveries in flight, claims more as slots free up, fans out new events and
    sweeps expired holds. Safe to run in several processes (claims skip rows another worker holds;
    records are fenced by the lease)."""

    def __init__(
        self, engine: Engine, clock: Clock, *, interval: float = 1.0, config: DeliveryConfig | None = None
    ) -> None:
        self.engine, self.clock, self.interval = engine, clock, interval
        self.config = config or DeliveryConfig()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="meterkit-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.deadline + self.interval + 5)

    def alive(self) -> bool:
        """Started and not stopped or dead (/readyz)."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        config = self.config
        sender = Sender(config, public_ids.codec(self.engine))
        tasks: set[asyncio.Task[bool]] = set()
        busy: dict[str, int] = {}  # endpoint -> deliveries in flight here
        next_sweep = time.monotonic()

        def done(endpoint_id: str, task: asyncio.Task[bool]) -> None:
            tasks.discard(task)
            busy[endpoint_id] -= 1
            if not busy[endpoint_id]:
                del busy[endpoint_id]

        try:
            while not self._stop.is_set():
                if config.hold_sweep and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + config.hold_sweep
                    await self._sweep_holds()
                claimed: list[Claimed] = []
                try:
                    await asyncio.to_thread(fan_out, self.engine, self.clock)
                    free = config.concurrency - len(tasks)
                    if free > 0:
                        claimed = await asyncio.to_thread(claim, self.engine, self.clock, config, free, dict(busy))
                except Exception:  # noqa: BLE001  (a worker must outlive one bad round; logged)
                    log.exception("webhook delivery round failed")
                for r in claimed:
                    busy[r.endpoint_id] = busy.get(r.endpoint_id, 0) + 1
                    task = asyncio.create_task(deliver_one(self.engine, self.clock, sender, r))
                    tasks.add(task)
                    task.add_done_callback(functools.partial(done, r.endpoint_id))
                if claimed and len(tasks) < config.concurrency:
                    continue  # slots left: more may be due now
                # Until a delivery ends (a slot frees up), or the interval passes.
                if tasks:
                    await asyncio.wait(set(tasks), timeout=self.interval, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.sleep(self.interval)
        finally:
            if tasks:
                await asyncio.wait(set(tasks), timeout=config.deadline + 1)
            for task in tasks:
                task.cancel()
            await sender.aclose()

    async def _sweep_holds(self) -> None:
        try:
            await asyncio.to_thread(expire_due_holds, self.engine, self.clock)
        except Exception:  # noqa: BLE001  (tried again at the next sweep; logged)
            log.exception("expiring holds failed")
