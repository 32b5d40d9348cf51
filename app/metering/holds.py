"""Holds: credits reserved for an async job (reserve), then charged for the work done (settle) or
given back (release), or freed past their expiry, by the tenant's next write (Meter.expire_holds)
or by the background sweep below (the delivery worker calls it): a tenant that stops writing still
gets its reserved credits back and its `hold.expired` alerts. Each tenant is its own short
transaction through the same code as a write's (Meter locks the account and expires its holds: the
status flip is the guard, so a hold expires exactly once whoever gets there first).

reserve/settle/release run inside the caller's transaction (app/metering/commands.py opens it)."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.budgets.enforce import release_hold
from app.core.auth import TenantScope
from app.core.clock import Clock, as_utc
from app.core.db import connection_of_work
from app.core.errors import NotFound, ValidationFailed
from app.core.ids import new_id
from app.credits import ledger
from app.live import notify as live
from app.metering import payer, settle_rules
from app.metering.charge_repository import HOLD
from app.metering.errors import HoldClosed, IdempotencyConflict
from app.metering.meter import Meter
from app.metering.settle_rules import call_units
from app.metering.types import Charged, HoldView, MeterRequest

log = logging.getLogger("meterkit.holds")


def _hold_view(row: Any, *, replayed: bool = False) -> HoldView:
    return HoldView(
        id=row.id,
        primitive=row.primitive,
        quantity=row.quantity,
        amount=row.amount,
        status=row.status,
        expires_at=as_utc(row.expires_at),
        settled_amount=row.settled_amount,
        replayed=replayed,
    )


def reserve(
    session: Session, clock: Clock, scope: TenantScope, req: MeterRequest, *, negative_buffer: int, ttl_seconds: int
) -> HoldView:
    req.validate()
    if not 1 <= ttl_seconds <= 7 * 86400:
        raise ValidationFailed("ttlSeconds must be between 1 and 604800", field="ttlSeconds")
    meter = Meter(session, clock, scope, negative_buffer=negative_buffer, api_key_id=req.api_key_id)
    return _reserve(meter, req, timedelta(seconds=ttl_seconds))


def settle(
    session: Session,
    clock: Clock,
    scope: TenantScope,
    hold_id: str,
    actual: MeterRequest | None,
    *,
    negative_buffer: int,
    api_key_id: str | None = None,
) -> Charged:
    """`api_key_id`: the key that settles (the event's key), as MeterRequest.api_key_id for a charge.
    Work done: never refused by a limit, but charged only as far as the limits admit, the settling
    key's budget included; the rest is cut (app/metering/settle_rules.py)."""
    if actual is not None:
        actual.validate()
    meter = Meter(session, clock, scope, negative_buffer=negative_buffer, api_key_id=api_key_id)
    return _settle(meter, hold_id, actual, api_key_id)


def release(session: Session, clock: Clock, scope: TenantScope, hold_id: str) -> HoldView:
    return _release(Meter(session, clock, scope, negative_buffer=0), hold_id)


def _reserve(m: Meter, req: MeterRequest, ttl: timedelta) -> HoldView:
    fp = req.fingerprint()
    existing = m.conn.execute(
        select(HOLD).where(and_(HOLD.c.tenant_id == m.scope.tenant_id, HOLD.c.idempotency_key == req.idempotency_key))
    ).first()
    if existing is not None:
        if existing.request_hash != fp:
            raise IdempotencyConflict(req.idempotency_key)
        return _hold_view(existing, replayed=True)
    d = m.decide(req, count=True)
    t = m.terms
    # New work: refused at or below zero, or when the estimate does not fit (on each account that pays).
    if t.tenant_pays and (m.state.available <= 0 or m.state.available < d.amount):
        raise m.insufficient(d.amount)
    spend = m.key_spend()
    if spend is not None:  # the estimate must fit the key's budget, and is held against it while open
        spend.check(req.primitive, req.quantity, d.amount)
    org = m.organization_account()
    if org is not None:
        m.check_cap(d.amount, d.period)  # the end user's rows first, the organization's row last
        available = org.available()
        if available <= 0 or available < d.amount:
            exc = org.refusal(d.period.start)
            exc.required = d.amount
            raise exc
    if spend is not None:
        spend.hold(req.primitive, req.quantity, d.amount)
    hold_id = new_id("hold")
    expires = m.now + ttl
    m.conn.execute(
        insert(HOLD).values(
            id=hold_id,
            tenant_id=m.scope.tenant_id,
            idempotency_key=req.idempotency_key,
            request_hash=fp,
            primitive=req.primitive,
            quantity=req.quantity,
            amount=d.amount,
            status="open",
            reference=req.reference,
            connection=req.connection,
            expires_at=expires,
            created_at=m.now,
            api_key_id=req.api_key_id,
            budget_period_start=spend.period.start if spend is not None else None,
            own_reserved=t.tenant_pays,
            payer_id=org.scope.tenant_id if org is not None else None,
        )
    )
    if t.tenant_pays:
        _set_reserved(m, m.state.reserved + d.amount)
    if org is not None:
        org.hold(d.amount)
        live.publish(m.conn, live.balance_moved(org.scope.tenant_id))
    return HoldView(
        id=hold_id,
        primitive=req.primitive,
        quantity=req.quantity,
        amount=d.amount,
        status="open",
        expires_at=expires,
        # The end user's own available: never its organization's balance.
        available_after=m.state.available if t.tenant_pays else None,
    )


def _set_reserved(m: Meter, reserved: int) -> None:
    m.state = ledger.AccountState(m.state.balance, reserved)
    m.conn.execute(
        update(ledger.ACCOUNT).where(ledger.ACCOUNT.c.tenant_id == m.scope.tenant_id).values(reserved=m.state.reserved)
    )
    live.publish(m.conn, live.balance_moved(m.scope.tenant_id))  # available moved


def _find(m: Meter, hold_id: str) -> Any:
    row = m.conn.execute(select(HOLD).where(and_(HOLD.c.id == hold_id, HOLD.c.tenant_id == m.scope.tenant_id))).first()
    if row is None:
        raise NotFound("Hold", hold_id)
    if row.status == "open" and as_utc(row.expires_at) <= m.now:
        # Past its expiry and not closed yet (a hold its organization alone held is not closed by the
        # lock of the end user's account): close it now, so it answers as expired.
        m.expire_holds()
        return _find(m, hold_id)
    return row


def _unhold_payer(m: Meter, hold: Any) -> None:
    """The organization that held this hold holds it no more (its row: the transaction's last lock)."""
    if hold.payer_id is None:
        return
    org = m.organization_account()
    if org is not None and org.scope.tenant_id == hold.payer_id:
        org.unhold(hold.amount)
    else:  # the organization's switches changed since the hold was made
        payer.unhold(m.conn, hold.payer_id, hold.amount)
    live.publish(m.conn, live.balance_moved(hold.payer_id))


def _settle(m: Meter, hold_id: str, actual: MeterRequest | None, api_key_id: str | None = None) -> Charged:
    hold = _find(m, hold_id)
    if hold.status == "settled":
        return Charged.from_stored(int(hold.settle_result["eventId"]), hold.settle_result)
    if hold.status != "open":
        raise HoldClosed(hold_id, hold.status)
    req = actual or MeterRequest(
        primitive=hold.primitive,
        idempotency_key=f"hold:{hold_id}",
        quantity=hold.quantity,
        reference=hold.reference,
        connection=hold.connection,
    )
    if req.primitive != hold.primitive:
        raise ValidationFailed("actual.primitive must match the hold's primitive", field="primitive")
    key_id = api_key_id if api_key_id is not None else req.api_key_id  # the settling key
    req = MeterRequest(
        **{
            **asdict(req),
            "idempotency_key": f"hold:{hold_id}",
            "api_key_id": key_id,
            "connection": req.connection or hold.connection,
        }
    )
    # Work already done: never refused by a limit, but charged only as far as the limits admit
    # (per call, quota without overage, the settling key's budget, the balance floor); the rest is
    # cut and named in the answer, and the hold closes either way (app/metering/settle_rules.py).
    d = m.decide(req, count=False, amount=None if actual else hold.amount)
    m.sweep()
    release_hold(m.conn, hold)  # held no more: the key's spend below is read without this hold
    per_call = (m.terms.kit_limits.get(req.primitive) or {}).get("max_quantity_per_call")
    t = m.terms
    own_held = hold.amount if hold.own_reserved else 0
    spend = m.key_spend()  # the end user's rows, before the organization's
    cap_room = org_room = None
    org = m.organization_account()
    if org is not None:
        used = m.cap_used(d.period)  # counts this hold while it is open: give it back
        if used is not None and t.credit_cap is not None:
            cap_room = t.credit_cap - (used - (hold.amount if hold.payer_id is not None else 0))
        _unhold_payer(m, hold)  # the organization's row: the last lock
        org_room = org.available() - m.floor
    got = settle_rules.admit(
        primitive=req.primitive,
        quantity=req.quantity,
        units=call_units(req.quantity, req.num_images, req.duration_seconds),
        price=d.amount,
        per_call=per_call,
        quota=d.quota,
        used=d.used,
        overage=m.terms.overage,
        spend=spend,
        room=m.state.available + own_held - m.floor if t.tenant_pays else None,
        cap_room=cap_room,
        org_room=org_room,
    )
    d.amount, d.cut = got.credits, got.cut
    if got.quantity != req.quantity:
        req = replace(req, quantity=got.quantity)  # what is counted: event, counters, rollup, key spend
    if org is None:
        _unhold_payer(m, hold)  # held by an organization that no longer pays for this end user
    elif d.amount:
        org.debit(m.clock, d.amount, req.primitive, m.scope.tenant_id)
    result = m.record(req, d, kind="settle", key=f"hold:{hold_id}", release_reserved=own_held)
    stored = {**result.stored(), "eventId": result.event_id}
    m.conn.execute(
        update(HOLD)
        .where(and_(HOLD.c.tenant_id == m.scope.tenant_id, HOLD.c.id == hold_id))  # routed by the tenant
        .values(status="settled", settled_amount=d.amount, settle_result=stored, closed_at=m.now)
    )
    return result


def _release(m: Meter, hold_id: str) -> HoldView:
    hold = _find(m, hold_id)
    if hold.status == "released":
        return _hold_view(hold, replayed=True)
    if hold.status != "open":
        raise HoldClosed(hold_id, hold.status)
    m.conn.execute(
        update(HOLD)
        .where(and_(HOLD.c.tenant_id == m.scope.tenant_id, HOLD.c.id == hold_id))
        .values(status="released", closed_at=m.now)
    )
    release_hold(m.conn, hold)
    if hold.own_reserved:
        _set_reserved(m, m.state.reserved - hold.amount)
    _unhold_payer(m, hold)
    view = _hold_view(hold)
    view.status = "released"
    view.available_after = m.state.available if hold.own_reserved else None
    return view


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
                meter.expire_holds()
                live.publish(conn, live.balance_moved(tenant_id))  # available moved: subscribers look again
        except Exception:  # noqa: BLE001  (one tenant's failure leaves the others' holds to expire)
            log.exception("expiring the holds of tenant %s failed", tenant_id)
            continue
        swept.append(tenant_id)
    return swept
