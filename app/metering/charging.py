"""The charge and the batch inside the caller's transaction: PostgreSQL's one round trip first
when the charge is the caller's whole unit of work (app/metering/pg_charge.py), else the charge
core (app/metering/meter.py)."""

from __future__ import annotations

from sqlalchemy.engine import Connection
from sqlmodel import Session

from app.core.auth import TenantScope
from app.core.clock import Clock
from app.core.errors import DomainError
from app.core.sql import Sql, run
from app.metering import pg_charge
from app.metering.batch import BatchMeter
from app.metering.charge_repository import key_list
from app.metering.meter import Meter
from app.metering.types import BatchOutcome, Charged, MeterRequest


def charge(
    session: Session | Connection,
    clock: Clock,
    scope: TenantScope,
    req: MeterRequest,
    *,
    negative_buffer: int,
    precheck: bool = False,
    alone: bool = False,
) -> Charged:
    """precheck=True also refuses when the available balance is already at or below zero before
    this charge (for callers that charge before they run the operation); a replay still answers.
    alone=True: the charge is the caller's whole unit of work (the GraphQL and REST edges), so on
    PostgreSQL it may commit by itself in one round trip; any other caller keeps its atomicity."""
    req.validate()
    if alone:
        # PostgreSQL: the common case in one round trip (app/metering/pg_charge.py); None: the full path.
        done = pg_charge.try_charge(session, clock, scope, req, negative_buffer=negative_buffer, precheck=precheck)
        if done is not None:
            return done
    return Meter(session, clock, scope, negative_buffer=negative_buffer, api_key_id=req.api_key_id, charge=req).charge(
        req, precheck=precheck
    )


def charge_batch(
    session: Session | Connection,
    clock: Clock,
    items: list[tuple[TenantScope, MeterRequest]],
    *,
    negative_buffer: int,
    alone: bool = False,
) -> list[BatchOutcome]:
    """Many charges in one transaction, each with its own key and result. Tenants' accounts are
    locked in sorted order, so two batches touching the same tenants cannot deadlock.
    alone=True: the batch is the caller's whole unit of work (as for charge())."""
    if alone:
        # PostgreSQL: a common batch in one round trip (app/metering/pg_charge.py); None: the full path.
        done = pg_charge.try_charge_batch(session, clock, items, negative_buffer=negative_buffer)
        if done is not None:
            return done
    results: list[BatchOutcome | None] = [None] * len(items)
    by_tenant: dict[str, list[int]] = {}
    for i, (scope, req) in enumerate(items):
        try:
            req.validate()
        except DomainError as exc:
            results[i] = exc
            continue
        by_tenant.setdefault(scope.tenant_id, []).append(i)
    if len(by_tenant) > 1:
        _lock_in_order(session, sorted(by_tenant))
    for tenant_id in sorted(by_tenant):
        scope = items[by_tenant[tenant_id][0]][0]
        # A request's items share the key that sent them; the LLM proxy's biller (app/llmproxy/biller.py)
        # batches calls of several keys: one set-based pass per key, each under that key's budgets.
        by_key: dict[str, list[int]] = {}
        for i in by_tenant[tenant_id]:
            by_key.setdefault(items[i][1].api_key_id or "", []).append(i)
        for key_id in sorted(by_key):
            indexes = by_key[key_id]
            try:
                meter = BatchMeter(session, clock, scope, negative_buffer=negative_buffer, api_key_id=key_id or None)
            except DomainError as exc:
                for i in indexes:
                    results[i] = exc
                continue
            for i, outcome in zip(indexes, meter.charge_many([items[i][1] for i in indexes]), strict=True):
                results[i] = outcome
    return [r for r in results if r is not None]


_PAYERS = Sql(
    "SELECT DISTINCT t.organization_id FROM tenant t JOIN organization o ON o.id = t.organization_id "
    "WHERE t.id IN (SELECT value FROM json_each(:ids)) AND (t.kind = 'organization' OR NOT o.platform_credits_exempt)",
    pg="SELECT DISTINCT t.organization_id FROM tenant t JOIN organization o ON o.id = t.organization_id "
    "WHERE t.id = ANY(:ids) AND (t.kind = 'organization' OR NOT o.platform_credits_exempt)",
)
_LOCK_MANY = Sql(
    "SELECT tenant_id FROM credit_account WHERE tenant_id = ANY(:ids) ORDER BY tenant_id FOR UPDATE",
)


def _lock_in_order(session: Session | Connection, tenant_ids: list[str]) -> None:
    """PostgreSQL: a batch of several tenants locks every end user's account row first (in id order),
    then the paying organizations' rows (in id order): the lock order of app/metering/payer.py, so two
    batches never deadlock, whatever organizations they touch. Nothing to do when no organization pays
    (one statement), nor on SQLite, whose BEGIN IMMEDIATE holds the whole database."""
    conn = session.connection() if isinstance(session, Session) else session
    if conn.dialect.name != "postgresql":
        return
    payers = sorted(r[0] for r in run(conn, _PAYERS, {"ids": key_list(conn, tenant_ids)}).all())
    if not payers:
        return
    users = [t for t in tenant_ids if t not in set(payers)]
    for ids in (users, payers):
        if ids:
            run(conn, _LOCK_MANY, {"ids": ids}).all()
