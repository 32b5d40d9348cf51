"""The read-only check: may the tenant call this primitive (or use this connection) right now?"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy.engine import Connection
from sqlmodel import Session

from app.budgets.enforce import KeySpend
from app.budgets.errors import BudgetExceeded
from app.core.auth import TenantScope
from app.core.clock import Clock
from app.core.errors import NotFound, UnknownPrimitive, ValidationFailed
from app.core.primitives import allowed, validate_connection
from app.core.sql import run, ts
from app.metering import payer
from app.metering.charge_repository import CHECK, USED, terms_from
from app.metering.errors import PackInfo, quota_message
from app.metering.settle_rules import call_units
from app.metering.types import CheckResult, MeterRequest
from app.periods import record as period_record
from app.periods.rules import minute_window
from app.pricing.service import PriceRequest, fixed_total, quote


def check(
    db: Session | Connection,
    clock: Clock,
    scope: TenantScope,
    *,
    primitive: str | None,
    connection: str | None,
    quantity: int = 1,
    negative_buffer: int = 0,
    details: PriceRequest | None = None,
    api_key_id: str | None = None,
    payer_visible: bool = True,
) -> CheckResult:
    """May the tenant call this primitive (or use this connection) right now? Writes nothing.

    One statement in the common case (a recorded period holds now, a fixed price): the terms, the
    balance with what expired of it, the quota, this period's count and the catalog entry. Without
    a recorded period, two more (the predicted period, then its count); an ORM session only for a
    dynamic price or the packs of an INSUFFICIENT_CREDITS answer. `details`: a dynamic price's
    parameters (model, tokens, numImages, duration...): priced as charge would, and numImages and
    video seconds count toward maxQuantityPerCall as they do for charge; the kit's callsPerMinute is
    checked against this minute's calls (read with the same statement). `api_key_id`: the calling
    key, whose budget (credits and quantity, open holds counted) is checked too (BUDGET_EXCEEDED):
    the LLM proxy's pre-check before it forwards a call.

    Who pays (app/metering/payer.py): the end user's own balance is checked when it pays (a wallet),
    the organization's when it pays (one more statement), and the end user's credit cap when one is
    set. `available` is the paying account's: the organization's when it alone pays, shown only when
    `payer_visible` (an end user's own key sees its own account, never the organization's balance;
    a refusal for the organization's credits is ORGANIZATION_CREDITS_EXHAUSTED without packs)."""
    if (primitive is None) == (connection is None):
        raise ValidationFailed("give exactly one of primitive or connection", field="primitive")
    session = db if isinstance(db, Session) else None
    conn = db.connection() if isinstance(db, Session) else db
    now = clock.now()
    params = {"tid": scope.tenant_id, "kid": api_key_id, "now": ts(conn, now), "p": primitive}
    params["win"] = ts(conn, minute_window(now))  # this minute's calls, for a kit's callsPerMinute
    row = run(conn, CHECK, params).first()
    if row is None:
        raise NotFound("Tenant", scope.tenant_id)
    balance, reserved, gone, freed, quota, used, unit_price, rule, active, calls = row[:10]
    terms = terms_from(row[10:], api_key_id)
    # Buckets past expiry count as gone and holds past expiry as freed, before a write sweeps them.
    available = int(balance) - int(gone) - int(reserved) + int(freed)
    org_id = terms.org_pays
    org_available = payer.available_now(conn, org_id, now) if org_id is not None else 0
    if org_id is not None and not terms.tenant_pays and payer_visible:
        available = org_available
    if connection is not None:
        validate_connection(connection)
        ok = terms.kit_key is not None and connection in terms.kit_connections
        return CheckResult(
            ok,
            None if ok else "NOT_ENTITLED",
            None if ok else f"connection {connection} is not in the tenant's Account Kit",
            None,
            connection,
            None,
            0,
            None,
            available,
            None,
        )
    assert primitive is not None
    priced: dict[str, Any] = {}
    if details is not None:
        priced = {k: v for k, v in asdict(details).items() if k not in ("primitive", "quantity")}
    req = MeterRequest(primitive=primitive, idempotency_key="check", quantity=quantity, **priced).validate()
    period = terms.recorded
    if period is None:
        # No recorded period holds now (a charge would record one): this period's count by prediction.
        period = period_record.predict(
            conn, scope.tenant_id, now, terms.plan_period, terms.sub_status, terms.sub_start, terms.sub_end
        )
        used = run(conn, USED, {"tid": scope.tenant_id, "ps": ts(conn, period.start), "p": primitive}).scalar_one()
    if active is None:
        raise UnknownPrimitive(primitive)
    if not active:
        raise UnknownPrimitive(primitive, retired=True)
    used = used or 0
    remaining = None if quota is None else max(quota - used, 0)

    def answer(reason: str | None, message: str | None, price: int | None) -> CheckResult:
        return CheckResult(reason is None, reason, message, primitive, None, quota, used, remaining, available, price)

    if terms.kit_key is None or not allowed(terms.kit_allowed, primitive):
        return answer("NOT_ENTITLED", f"{primitive} is not in the tenant's Account Kit", None)
    per_call = (terms.kit_limits.get(primitive) or {}).get("max_quantity_per_call")
    if per_call is not None and call_units(quantity, req.num_images, req.duration_seconds) > per_call:
        return answer("LIMIT_EXCEEDED", f"at most {per_call} per call", None)
    per_minute = (terms.kit_limits.get(primitive) or {}).get("calls_per_minute")
    if per_minute is not None and (calls or 0) + 1 > per_minute:  # as charge counts them, this UTC minute
        return answer("LIMIT_EXCEEDED", f"at most {per_minute} calls per minute", None)
    if quota is not None and used + quantity > quota and terms.overage != "allow":
        return answer("QUOTA_EXCEEDED", quota_message(primitive, quota, used, quantity), None)
    price: int | None
    try:
        if unit_price is not None and rule == "fixed":
            price = fixed_total(unit_price, req.quantity)  # the catalog row came with the statement
        else:
            session = session or Session(bind=conn)
            price = quote(session, req.price_request())
    except (ValidationFailed, NotFound):
        # Dynamic prices need parameters a plain check may not carry (or name a model without a rate):
        # no price, as before; the charge itself answers the typed refusal.
        price = None
    if terms.budget is not None:
        try:
            # New work must fit: at least one micro-credit of the key's credit budget left.
            KeySpend(conn, scope.tenant_id, terms.budget, now).check(primitive, quantity, max(price or 0, 1))
        except BudgetExceeded as exc:
            return answer("BUDGET_EXCEEDED", exc.message, price)
    if terms.tenant_pays and (available <= 0 or (price is not None and available < price)):
        from app.credits.packs import packs_covering

        # New work needs a positive balance that covers the price: at least one micro-credit.
        shortfall = max(price or 0, 1) - available
        refused = answer("INSUFFICIENT_CREDITS", "not enough credits for new work", price)
        refused.shortfall = shortfall
        refused.packs = [
            PackInfo(p.key, p.name, int(p.credits), int(p.price_usd_cents), n)
            for p, n in packs_covering(session or Session(bind=conn), shortfall)
        ]
        return refused
    if org_id is not None:
        if terms.credit_cap is not None and price:
            cap_used = payer.cap_used(conn, scope.tenant_id, period, now)
            if cap_used + price > terms.credit_cap:
                return answer("END_USER_CREDIT_CAP", "this user's credit cap for the period is reached", price)
        if org_available <= 0 or (price is not None and org_available < price):
            # No shortfall and no packs: the end user cannot buy the organization's credits.
            return answer("ORGANIZATION_CREDITS_EXHAUSTED", "the organization is out of credits", price)
    return answer(None, None, price)
