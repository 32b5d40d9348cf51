"""Checkout's return pages: where Stripe sends the buyer after paying or cancelling.

    GET /billing/{pack|plan}/success?session_id=cs_...   (Stripe fills in the session id)
    GET /billing/{pack|plan}/canceled?op=sop_...          (our operation id: Stripe fills nothing here)

Each shows the outcome of that one checkout as it stands in OUR database: the credits arrived
(or the plan is in force), still pending (Stripe's webhook has not arrived yet: the page reloads
itself every few seconds), or cancelled/expired (nothing was charged). The buyer's browser
carries no API key, so the page says only what the unguessable id already implies (which pack or
plan, how many credits), never the balance or the tenant. Small server-rendered HTML, no
external assets, no script, a link back to /dashboard; reads only."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from app.core.db import unit_of_work
from app.core.money import format_credits
from app.credits.models import CreditBucket
from app.credits.packs import pack_by_key
from app.integrations.stripe.handlers import checkout_grant_key
from app.integrations.stripe.models import StripeOperation
from app.integrations.stripe.repository import StripeRepository
from app.organizations.models import HOUSE, Organization
from app.tenants.models import Tenant

_SESSION_ID = re.compile(r"cs_[A-Za-z0-9_]{1,250}", re.ASCII)
_OP_ID = re.compile(r"sop_[0-9a-f]{32}", re.ASCII)
KINDS = {"pack": "pack_checkout", "plan": "plan_checkout"}
REFRESH_SECONDS = 3


@dataclass(frozen=True)
class CheckoutOutcome:
    state: str  # credited | active | pending | canceled | expired
    kind: str  # pack | plan
    target: str  # pack or plan key
    credits: int | None = None  # micro-credits of the pack


def checkout_outcome(s: Session, what: str, *, session_id: str | None, op_id: str | None) -> CheckoutOutcome | None:
    """What became of one checkout; None when there is no such checkout (of this kind)."""
    repo = StripeRepository(s)
    op: StripeOperation | None = None
    if session_id and _SESSION_ID.fullmatch(session_id):
        op = repo.operation_for_object(session_id)
    elif op_id and _OP_ID.fullmatch(op_id):
        op = repo.operation(op_id)
    if op is None or op.kind != KINDS[what]:
        return None
    canceled_page = session_id is None
    if what == "pack":
        pack = pack_by_key(s, op.target)
        credits = int(pack.credits) if pack else None
        granted = op.stripe_object_id is not None and (
            s.exec(
                select(CreditBucket.granted).where(
                    CreditBucket.tenant_id == op.tenant_id,
                    CreditBucket.grant_key == checkout_grant_key(op.stripe_object_id),
                )
            ).first()
        )
        if granted:
            return CheckoutOutcome("credited", what, op.target, int(granted))
        state = "expired" if op.status == "expired" else "canceled" if canceled_page else "pending"
        return CheckoutOutcome(state, what, op.target, credits)
    tenant = s.get(Tenant, op.tenant_id)
    # An organization's own account is on a platform tier (app/organizations/tiers.py), not a plan.
    org = s.get(Organization, op.tenant_id) if tenant is not None and tenant.kind == HOUSE else None
    current = org.tier_key if org is not None else tenant.plan_key if tenant is not None else None
    if op.status == "completed" and current == op.target:
        return CheckoutOutcome("active", what, op.target)
    state = "expired" if op.status == "expired" else "canceled" if canceled_page else "pending"
    return CheckoutOutcome(state, what, op.target)


def _text(o: CheckoutOutcome) -> tuple[str, str]:
    thing = f"the {o.target} pack" if o.kind == "pack" else f"the {o.target} plan"
    amount = f" ({format_credits(o.credits)} credits)" if o.credits is not None else ""
    if o.state == "credited":
        return "Credits arrived", f"{format_credits(o.credits or 0)} credits from {thing} are in your balance."
    if o.state == "active":
        return "Plan active", f"You are on {thing} now."
    if o.state == "pending":
        return (
            "Payment pending",
            f"Waiting for Stripe to confirm {thing}{amount}. This page updates itself; "
            "you can also close it, the credits arrive either way.",
        )
    if o.state == "expired":
        return "Checkout expired", f"This checkout for {thing} expired unpaid. Nothing was charged."
    return "Checkout cancelled", f"You left the checkout for {thing}. Nothing was charged."


def render(o: CheckoutOutcome | None) -> HTMLResponse:
    if o is None:
        title, message, status = "No such checkout", "This link does not name a checkout we know.", 404
    else:
        (title, message), status = _text(o), 200
    refresh = (
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if o is not None and o.state == "pending" else ""
    )
    state = o.state if o is not None else "unknown"
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        # No favicon request (a 404 in the browser's console).
        f'{refresh}<link rel="icon" href="data:,"><title>{html.escape(title)}</title>'
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}"
        "h1{font-size:1.4rem}</style></head>"
        f'<body><main data-state="{state}"><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>'
        # A way back: the dashboard the Buy button lives on (it asks for the key again if needed).
        '<p><a id="back" href="/dashboard">&larr; Back to the dashboard</a></p></main>'
        "</body></html>"
    )
    # Never cached: a pending page must show the credits once they arrive.
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def routes(state: Any) -> list[Route]:
    async def page(request: Request) -> Response:
        what = request.path_params["what"]
        outcome_page = request.path_params["outcome"]
        if what not in KINDS or outcome_page not in ("success", "canceled"):
            return render(None)
        session_id = request.query_params.get("session_id") if outcome_page == "success" else None
        op_id = request.query_params.get("op") if outcome_page == "canceled" else None

        def read() -> CheckoutOutcome | None:
            with unit_of_work(state.engine, write=False) as s:
                return checkout_outcome(s, what, session_id=session_id, op_id=op_id)

        return render(await run_in_threadpool(read))

    return [Route("/billing/{what}/{outcome}", page, methods=["GET"])]
