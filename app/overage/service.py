"""Overage billed through Stripe Billing Meters (README: "Overage billed through Stripe").

Two steps, each safe to run any time, from any process, any number of times:
1. close: every recorded period that has ended is closed once (a guarded UPDATE); its overage
   per primitive with an overage price becomes a pending report row, in the same transaction.
2. report: each pending row is sent as one meter event whose `identifier` and idempotency key
   are derived from the row's own key; the row is marked reported in its own transaction after
   Stripe acknowledges. A crash between the two sends the same request again: Stripe answers the
   stored response (same idempotency key) or refuses the duplicate identifier, and either is an
   acknowledgement. A refusal (Stripe down, no customer, no meter) keeps the row pending with its
   error and attempt count for the next run.
Each report goes to the Stripe account its end user's customer lives on: its organization's own
(`org_gateway`) once the organization connected one, the platform's otherwise.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import stripe
from sqlalchemy import and_, insert, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.core.clock import Clock, as_utc
from app.core.db import unit_of_work
from app.core.errors import DomainError
from app.integrations.stripe.client import StripeGateway
from app.integrations.stripe.models import OrganizationStripe
from app.metering.charge_repository import COUNTER, QUOTA, TENANT
from app.overage.models import OverageReport
from app.periods.models import BillingPeriod
from app.periods.reads import version_in_force

log = logging.getLogger("meterkit.overage")

BP: Any = BillingPeriod.__table__  # type: ignore[attr-defined]
REPORT: Any = OverageReport.__table__  # type: ignore[attr-defined]
CONNECTED: Any = OrganizationStripe.__table__  # type: ignore[attr-defined]
BATCH = 200


def identifier_for(tenant_id: str, period_start: datetime, primitive: str) -> str:
    """Deterministic from the row's key: the same report is the same request forever."""
    digest = hashlib.sha256(f"{tenant_id}|{as_utc(period_start).isoformat()}|{primitive}".encode()).hexdigest()
    return f"mk_ovg_{digest[:40]}"


def close_periods(session: Session, now: datetime, limit: int = BATCH) -> int:
    """Close the ended periods (at most `limit`) and write their pending reports. Returns how many closed."""
    conn = session.connection()
    ended = conn.execute(
        select(BP.c.tenant_id, BP.c.start_at, BP.c.end_at, BP.c.plan_key)
        .where(and_(BP.c.end_at <= now, BP.c.closed_at.is_(None)))
        .order_by(BP.c.end_at)
        .limit(limit)
    ).all()
    closed = 0
    for p in ended:
        # The guard: only one closer wins a period, whatever runs concurrently.
        won = conn.execute(
            update(BP)
            .where(and_(BP.c.tenant_id == p.tenant_id, BP.c.start_at == p.start_at, BP.c.closed_at.is_(None)))
            .values(closed_at=now)
            .returning(BP.c.tenant_id)
        ).first()
        if won is None:
            continue
        closed += 1
        owed = conn.execute(
            select(COUNTER.c.primitive, COUNTER.c.overage, QUOTA.c.overage_price_id)
            .select_from(
                COUNTER.join(
                    QUOTA,
                    and_(
                        QUOTA.c.primitive == COUNTER.c.primitive,
                        QUOTA.c.plan_key == p.plan_key,
                        # the version of the plan the tenant was billed on (its own, else the newest)
                        QUOTA.c.version == version_in_force(p.tenant_id),
                        # the tenant's organization's plan (plan keys are per organization)
                        QUOTA.c.organization_id
                        == select(TENANT.c.organization_id).where(TENANT.c.id == p.tenant_id).scalar_subquery(),
                    ),
                )
            )
            .where(
                and_(
                    COUNTER.c.tenant_id == p.tenant_id,
                    COUNTER.c.period_start == p.start_at,
                    COUNTER.c.overage > 0,
                    QUOTA.c.overage_price_id.is_not(None),
                )
            )
        ).all()
        for o in owed:
            conn.execute(
                insert(REPORT).values(
                    tenant_id=p.tenant_id,
                    period_start=p.start_at,
                    primitive=o.primitive,
                    period_end=p.end_at,
                    quantity=o.overage,
                    price_id=o.overage_price_id,
                    identifier=identifier_for(p.tenant_id, as_utc(p.start_at), o.primitive),
                    status="pending",
                    attempts=0,
                    created_at=now,
                )
            )
    return closed


@dataclass
class ReportRun:
    closed: int = 0
    reported: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class _Meters:
    """Price -> its meter's event name, resolved from Stripe once per run."""

    def __init__(self, gateway: StripeGateway) -> None:
        self.gateway = gateway
        self._names: dict[str, str] = {}

    def event_name(self, price_id: str) -> str:
        if price_id not in self._names:
            price = self.gateway.client.v1.prices.retrieve(price_id).to_dict()
            meter = (price.get("recurring") or {}).get("meter")
            if not meter:
                raise ValueError(f"price {price_id} is not a metered price on a Billing Meter")
            self._names[price_id] = str(self.gateway.client.v1.billing.meters.retrieve(meter).event_name)
        return self._names[price_id]


def _acknowledged(exc: stripe.StripeError) -> bool:
    # The event exists already (an earlier attempt got through before we could commit).
    return isinstance(exc, stripe.InvalidRequestError) and getattr(exc, "code", None) == "resource_already_exists"


def report_overage(
    engine: Engine,
    gateway: StripeGateway,
    clock: Clock,
    *,
    limit: int = BATCH,
    after_send: Callable[[Any], None] | None = None,
    org_gateway: Callable[[str], StripeGateway | None] | None = None,
) -> ReportRun:
    """Close ended periods, then send every pending report. `after_send` runs between Stripe's
    acknowledgement and our commit (tests put a crash there). `org_gateway(organization_id)` is the
    gateway of an organization's own Stripe (accounts.organization_gateway); an end user of an
    organization that connected one is reported there, never on the platform's account."""
    run = ReportRun()
    with unit_of_work(engine) as s:
        run.closed = close_periods(s, clock.now(), limit)
    with unit_of_work(engine, write=False) as s:
        pending = (
            s.connection()
            .execute(
                select(
                    REPORT,
                    TENANT.c.stripe_customer_id,
                    TENANT.c.organization_id.label("tenant_org"),
                    CONNECTED.c.organization_id.label("connected_org"),
                )
                .select_from(
                    REPORT.join(TENANT, TENANT.c.id == REPORT.c.tenant_id).outerjoin(
                        CONNECTED,
                        and_(CONNECTED.c.organization_id == TENANT.c.organization_id, TENANT.c.kind == "end_user"),
                    )
                )
                .where(REPORT.c.status == "pending")
                .order_by(REPORT.c.created_at, REPORT.c.identifier)
                .limit(limit)
            )
            .all()
        )
    meters: dict[str | None, _Meters] = {None: _Meters(gateway)}
    for row in pending:
        account = row.connected_org
        if account not in meters:
            try:
                own = org_gateway(account) if org_gateway is not None else None
            except DomainError as exc:  # a secret no configured key opens, no platform key: named, never shown
                log.warning("overage: organization %s's Stripe: %s", account, exc.message)
                own = None
            if own is None:
                run.failed += 1
                run.errors.append(f"{row.tenant_id} {row.primitive}: the organization's own Stripe is not reachable")
                continue  # never the platform's account for an organization's end user
            meters[account] = _Meters(own)
        error = _send(meters[account].gateway, meters[account], row)
        if error is not None:
            run.failed += 1
            run.errors.append(f"{row.tenant_id} {row.primitive}: {error}")
            with unit_of_work(engine) as s:
                s.connection().execute(
                    update(REPORT)
                    .where(and_(REPORT.c.identifier == row.identifier, REPORT.c.status == "pending"))
                    .values(attempts=REPORT.c.attempts + 1, last_error=error[:500])
                )
            continue
        if after_send is not None:
            after_send(row)
        with unit_of_work(engine) as s:
            s.connection().execute(
                update(REPORT)
                .where(and_(REPORT.c.identifier == row.identifier, REPORT.c.status == "pending"))
                .values(status="reported", attempts=REPORT.c.attempts + 1, last_error=None, reported_at=clock.now())
            )
        run.reported += 1
    return run


def _send(gateway: StripeGateway, meters: _Meters, row: Any) -> str | None:
    """One meter event; None when Stripe has it, else why not."""
    if not row.stripe_customer_id:
        return "the tenant has no Stripe customer"
    try:
        name = meters.event_name(row.price_id)
        gateway.client.v1.billing.meter_events.create(
            {
                "event_name": name,
                "identifier": row.identifier,
                # Inside the period, so Stripe bills it with that period's usage.
                "timestamp": int(as_utc(row.period_end).timestamp()) - 1,
                "payload": {"stripe_customer_id": row.stripe_customer_id, "value": str(row.quantity)},
            },
            {"idempotency_key": row.identifier},
        )
    except stripe.StripeError as exc:
        if _acknowledged(exc):
            return None
        log.warning("overage report %s failed: %s", row.identifier, exc)
        return str(getattr(exc, "user_message", None) or exc)[:500]
    except ValueError as exc:
        return str(exc)
    return None
