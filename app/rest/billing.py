"""Buying over REST: GET /v1/billing/packs (`meterkit billing packs`), POST
/v1/billing/topup (`billing topup --pack`: a Stripe Checkout URL) and POST
/v1/billing/upgrade (`billing upgrade --plan`), over the same Stripe service as GraphQL's
purchaseCreditPack and changePlan. Credits and plan changes arrive with Stripe's webhook."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.credits import packs as pack_service
from app.integrations.stripe import accounts
from app.integrations.stripe import service as stripe_service
from app.rest.base import Call, Endpoint, Money, Out, Strict, credits, purchase, usd_cents


class Purchase(Out):
    method: str
    path: str
    body: dict[str, str]


class PackOut(Out):
    key: str
    name: str
    credits: Money
    price_usd: Money
    expires_after_days: int | None = Field(description="null: purchased credits never expire")
    purchase: Purchase = Field(description="The request that buys it (answers a Checkout URL)")


class PacksOut(Out):
    packs: list[PackOut] = Field(description="Cheapest first")


class TopupBody(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"pack": "medium"}]})

    pack: str = Field(min_length=1, max_length=64, examples=["medium"])


class TopupOut(Out):
    checkout_url: str = Field(description="Open it to pay; the credits arrive with Stripe's webhook")
    session_id: str
    pack: str


class UpgradeBody(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"plan": "pro"}]})

    plan: str = Field(min_length=1, max_length=64, examples=["pro"])


class UpgradeOut(Out):
    outcome: Literal["checkout", "submitted"] = Field(
        description="checkout: no live subscription yet, pay at checkout_url; submitted: the live Stripe "
        "subscription was moved to the plan's price"
    )
    plan: str
    checkout_url: str | None
    session_id: str | None
    stripe_subscription_id: str | None


async def packs(call: Call) -> PacksOut:
    rows = await call.rest.read(lambda s: pack_service.list_packs(s))
    return PacksOut(
        packs=[
            PackOut(
                key=p.key,
                name=p.name,
                credits=credits(p.credits),
                price_usd=usd_cents(p.price_usd_cents),
                expires_after_days=p.expires_after_days,
                purchase=Purchase(**purchase(p.key)),
            )
            for p in rows
        ]
    )


async def topup(call: Call) -> TopupOut:
    scope, rest = call.tenant(), call.rest
    # An end user of an organization with its own Stripe buys on that account (accounts.py).
    gateway = await run_in_threadpool(accounts.gateway_for_tenant, rest.engine, rest.settings, scope.tenant_id)
    # Spans Stripe calls: the service runs its own short transactions, never one across the network.
    started = await run_in_threadpool(
        stripe_service.purchase_credit_pack, rest.engine, gateway, rest.settings, rest.clock, scope, call.body.pack
    )
    return TopupOut(checkout_url=started.url, session_id=started.session_id, pack=started.target)


async def upgrade(call: Call) -> UpgradeOut:
    scope, rest = call.tenant(), call.rest
    # An end user of an organization with its own Stripe buys on that account (accounts.py).
    gateway = await run_in_threadpool(accounts.gateway_for_tenant, rest.engine, rest.settings, scope.tenant_id)
    result: Any = await run_in_threadpool(
        stripe_service.change_plan, rest.engine, gateway, rest.settings, rest.clock, scope, call.body.plan
    )
    if isinstance(result, stripe_service.CheckoutStarted):
        return UpgradeOut(
            outcome="checkout",
            plan=result.target,
            checkout_url=result.url,
            session_id=result.session_id,
            stripe_subscription_id=None,
        )
    return UpgradeOut(
        outcome="submitted",
        plan=result.plan_key,
        checkout_url=None,
        session_id=None,
        stripe_subscription_id=result.stripe_subscription_id,
    )


STRIPE_REFUSALS = (409, 502, 503)


def endpoints() -> list[Endpoint]:
    return [
        Endpoint("GET", "/v1/billing/packs", "read", "Credit packs for sale", packs, PacksOut, tenant=False),
        Endpoint(
            "POST",
            "/v1/billing/topup",
            "manage",
            "Buy a credit pack: a Stripe Checkout URL",
            topup,
            TopupOut,
            body=TopupBody,
            refusals=STRIPE_REFUSALS,
        ),
        Endpoint(
            "POST",
            "/v1/billing/upgrade",
            "manage",
            "Move to another plan through Stripe",
            upgrade,
            UpgradeOut,
            body=UpgradeBody,
            refusals=STRIPE_REFUSALS,
            fields={"planKey": "plan"},
        ),
    ]
