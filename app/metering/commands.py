"""The metering use cases as commands: charge, charge batch, reserve, settle, release and check.

A command takes the engine and clock, the tenant scope and the request; it opens and owns its
transaction and does the use case's side effects: a refusal for credits records the tenant's
`balance.exhausted` in its own small transaction once the refused one has rolled back
(app/alerts/refusals.py); the live notifications and the threshold alerts of a write commit with
it (app/live, app/alerts/emit.py). The edges (GraphQL resolvers, REST routes) call the same
command through the unit-of-work runner, `await uow.call(commands.charge, ..., retry=True)`
(app/core/uow.py: on the event loop for inline SQLite, else the whole command in one worker
thread hop, run once more on PostgreSQL's unique-key race), and only translate input and output.
Commands are synchronous, so a script or the CLI calls them as they are. Each counts its outcome
for /metrics (app/observability/metrics.py: an in-memory counter, no I/O)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from app.alerts.refusals import record_exhausted
from app.core.auth import TenantScope
from app.core.clock import Clock
from app.core.db import connection_of_work, unit_of_work
from app.core.errors import DomainError
from app.metering import charging, holds
from app.metering import check as checks
from app.metering.errors import InsufficientCredits, OrganizationCreditsExhausted
from app.metering.types import BatchOutcome, Charged, CheckResult, HoldView, MeterRequest
from app.observability import metrics
from app.pricing.service import PriceRequest


def charge(
    engine: Engine, clock: Clock, scope: TenantScope, req: MeterRequest, *, negative_buffer: int, precheck: bool = False
) -> Charged:
    """One metered call, exactly once per idempotency key. On PostgreSQL the common case is one
    round trip (the charge is the whole unit of work: app/metering/pg_charge.py)."""
    try:
        with connection_of_work(engine) as conn:
            result = charging.charge(
                conn, clock, scope, req, negative_buffer=negative_buffer, precheck=precheck, alone=True
            )
    except DomainError as exc:
        metrics.refused("charge", req.primitive, exc.code)
        if isinstance(exc, InsufficientCredits | OrganizationCreditsExhausted):
            record_exhausted(engine, clock, exc)
        raise
    metrics.charged("charge", req.primitive, result.credits_used, result.replayed)
    return result


def charge_batch(
    engine: Engine, clock: Clock, items: list[tuple[TenantScope, MeterRequest]], *, negative_buffer: int
) -> list[BatchOutcome]:
    """Many charges in one transaction, each with its own outcome (a refusal is an outcome)."""
    with connection_of_work(engine) as conn:
        outcomes = charging.charge_batch(conn, clock, items, negative_buffer=negative_buffer, alone=True)
    # Counted per (primitive, replayed) once for the batch, not once per item.
    charged: dict[tuple[str, bool], list[int]] = {}
    for (_, req), outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, Charged):
            total = charged.get((req.primitive, outcome.replayed))
            if total is None:
                total = charged[req.primitive, outcome.replayed] = [0, 0]
            total[0] += 1
            total[1] += outcome.credits_used
            continue
        metrics.refused("batch", req.primitive, outcome.code)
        if isinstance(outcome, InsufficientCredits | OrganizationCreditsExhausted):
            record_exhausted(engine, clock, outcome)
    for (primitive, replayed), (count, credits_used) in charged.items():
        metrics.charged("batch", primitive, credits_used, replayed, count=count)
    return outcomes


def reserve(
    engine: Engine,
    clock: Clock,
    scope: TenantScope,
    req: MeterRequest,
    *,
    negative_buffer: int,
    ttl_seconds: int,
) -> HoldView:
    """Hold the estimate of an async job."""
    try:
        with unit_of_work(engine) as session:
            hold = holds.reserve(session, clock, scope, req, negative_buffer=negative_buffer, ttl_seconds=ttl_seconds)
    except DomainError as exc:
        metrics.refused("reserve", req.primitive, exc.code)
        if isinstance(exc, InsufficientCredits | OrganizationCreditsExhausted):
            record_exhausted(engine, clock, exc)
        raise
    metrics.held(req.primitive)
    return hold


def settle(
    engine: Engine,
    clock: Clock,
    scope: TenantScope,
    hold_id: str,
    actual: MeterRequest | None,
    *,
    negative_buffer: int,
    api_key_id: str | None,
) -> Charged:
    """The job succeeded: charge what the limits admit of the actual (default: the estimate)."""
    try:
        with unit_of_work(engine) as session:
            result = holds.settle(
                session, clock, scope, hold_id, actual, negative_buffer=negative_buffer, api_key_id=api_key_id
            )
    except DomainError as exc:
        metrics.refused("settle", actual.primitive if actual else None, exc.code)
        raise
    metrics.charged("settle", result.usage.primitive, result.credits_used, result.replayed)
    return result


def release(engine: Engine, clock: Clock, scope: TenantScope, hold_id: str) -> HoldView:
    """The job failed: free the hold, charge nothing."""
    with unit_of_work(engine) as session:
        return holds.release(session, clock, scope, hold_id)


def check(
    engine: Engine,
    clock: Clock,
    scope: TenantScope,
    *,
    primitive: str | None,
    connection: str | None,
    quantity: int = 1,
    details: PriceRequest | None = None,
    api_key_id: str | None = None,
    payer_visible: bool = True,
) -> CheckResult:
    """May the tenant call this primitive (or use this connection) now? Reads only. `api_key_id`:
    also check that key's budget. payer_visible: the caller may see the paying organization's balance
    (organization and platform keys; never an end user's own key)."""
    with connection_of_work(engine, write=False) as conn:
        return checks.check(
            conn,
            clock,
            scope,
            primitive=primitive,
            connection=connection,
            quantity=quantity,
            details=details,
            api_key_id=api_key_id,
            payer_visible=payer_visible,
        )
