"""The SDK over the generated client: `client.plans.upsert(...)`,
`client.for_user(id).billing.set_subscription(...)`, `client.for_user(id).billing.usage()`,
`client.charge(...)`, `client.reserve(...)`.

Every call returns the success type of its GraphQL result (a typed pydantic model from
meterkit_client/generated) or raises: `Refused` for an answer the gateway gave (a typed error result,
a GraphQL error such as FORBIDDEN, or a 401), `Unreachable` when there was no answer at all.
Scope is the key's: a tenant key acts for its tenant; an operator key acts for a tenant through
`for_user(tenant_id)` (the X-Tenant-Id header)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import httpx
from pydantic import BaseModel

from meterkit_client._scope import MeterkitError, Refused, Unreachable, _ok, _Scope
from meterkit_client.control import Audit, Credits, Keys, Kits, Plans, Primitives, StripeInbox, Tenants, Webhooks
from meterkit_client.generated import client as gen
from meterkit_client.generated.input_types import MeterInput, PriceDetailsInput, SetSubscriptionInput

__all__ = ["BillingUsage", "Meterkit", "MeterkitError", "Refused", "TenantView", "Unreachable", "as_json"]


def _meter_input(
    primitive: str,
    idempotency_key: str,
    quantity: int,
    reference: str | None,
    details: PriceDetailsInput | Mapping[str, Any] | None,
) -> MeterInput:
    if details is not None and not isinstance(details, PriceDetailsInput):
        details = PriceDetailsInput.model_validate(dict(details))
    return MeterInput.model_validate(
        {
            "primitive": primitive,
            "idempotency_key": idempotency_key,
            "quantity": quantity,
            "reference": reference,
            "details": details,
        }
    )


@dataclass(frozen=True)
class UsagePeriod:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class BillingUsage:
    """The period's `{ plan, status, period, quotas, usage }`: quotas and usage by primitive."""

    plan: str | None
    status: str | None
    period: UsagePeriod
    quotas: dict[str, int]
    usage: dict[str, int]
    lines: list[Any] = field(default_factory=list)  # every line with used, remaining, overage

    def remaining(self, primitive: str) -> int | None:
        quota = self.quotas.get(primitive)
        return None if quota is None else quota - self.usage.get(primitive, 0)


class Billing(_Scope):
    """The tenant in scope: subscription, usage, history, packs and Stripe purchases."""

    def set_subscription(
        self,
        *,
        plan_key: str,
        status: str = "active",
        stripe_customer_id: str | None = None,
        stripe_subscription_id: str | None = None,
        current_period_start: datetime | str | None = None,
        current_period_end: datetime | str | None = None,
        assign_kit: bool = True,
    ) -> gen.SetSubscriptionSetSubscriptionSubscriptionChanged:
        data = SetSubscriptionInput.model_validate(
            {
                "plan_key": plan_key,
                "status": status,
                "stripe_customer_id": stripe_customer_id,
                "stripe_subscription_id": stripe_subscription_id,
                "current_period_start": current_period_start,
                "current_period_end": current_period_end,
                "assign_kit": assign_kit,
            }
        )
        result = self._call(self._gql.set_subscription, input=data)
        return _ok(result, "SubscriptionChanged")  # type: ignore[no-any-return]

    def usage(self) -> BillingUsage:
        viewer = self._call(self._gql.billing_usage)
        if viewer is None or viewer.usage is None:
            raise Refused("NOT_FOUND", "no tenant in scope, or it has no plan")
        report = viewer.usage
        return BillingUsage(
            plan=report.plan,
            status=report.status,
            period=UsagePeriod(report.period.start, report.period.end),
            quotas={q.primitive: q.quota for q in report.quotas if q.quota is not None},
            usage={u.primitive: u.used for u in report.usage},
            lines=list(report.usage),
        )

    def history(self, *, days: int = 30, limit: int = 50, after: str | None = None) -> gen.CreditHistoryCreditHistory:
        """Usage history: ledger entries (action, amount, reference) newest first."""
        return self._call(self._gql.credit_history, days=days, first=limit, after=after)

    def packs(self) -> list[gen.CreditPacksCreditPacks]:
        return self._call(self._gql.credit_packs)

    def topup(self, pack: str) -> gen.PurchaseCreditPackPurchaseCreditPackCheckoutSession:
        """Buys a credit pack: a Stripe Checkout Session; credits arrive by webhook."""
        return _ok(self._call(self._gql.purchase_credit_pack, pack=pack), "CheckoutSession")  # type: ignore[no-any-return]

    def upgrade(
        self, plan: str
    ) -> gen.ChangePlanChangePlanCheckoutSession | gen.ChangePlanChangePlanPlanChangeSubmitted:
        """Moves to another plan: the subscription moved, or a Checkout URL for a first one."""
        result = self._call(self._gql.change_plan, plan_key=plan)
        return _ok(result, "CheckoutSession", "PlanChangeSubmitted")  # type: ignore[no-any-return]


class TenantView(_Scope):
    """What acts for one tenant: `billing`, `status()` and the metered calls."""

    def __init__(self, gql: gen.GeneratedClient, tenant_id: str | None) -> None:
        super().__init__(gql, tenant_id)
        self.billing = Billing(gql, tenant_id)

    def status(self) -> gen.StatusStatus:
        return self._call(self._gql.status)

    def charge(
        self,
        primitive: str,
        *,
        idempotency_key: str,
        quantity: int = 1,
        reference: str | None = None,
        details: PriceDetailsInput | Mapping[str, Any] | None = None,
    ) -> gen.ChargeChargeCharged:
        """Charge a synchronous operation that succeeded, once per idempotency key.
        Refused codes: INSUFFICIENT_CREDITS (result.packs), QUOTA_EXCEEDED, NOT_ENTITLED, ..."""
        data = _meter_input(primitive, idempotency_key, quantity, reference, details)
        return _ok(self._call(self._gql.charge, input=data), "Charged")  # type: ignore[no-any-return]

    def reserve(
        self,
        primitive: str,
        *,
        idempotency_key: str,
        quantity: int = 1,
        reference: str | None = None,
        details: PriceDetailsInput | Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
    ) -> gen.ReserveReserveHold:
        """Hold the estimate of an async job (its pre-check at submission); settle or release it later."""
        data = _meter_input(primitive, idempotency_key, quantity, reference, details)
        result = self._call(self._gql.reserve, input=data, ttl_seconds=ttl_seconds)
        return _ok(result, "Hold")  # type: ignore[no-any-return]

    def settle(self, hold_id: str, *, actual: MeterInput | None = None) -> gen.SettleSettleCharged:
        """The job succeeded: charge the held estimate, or `actual` (e.g. the real video length)."""
        result = self._call(self._gql.settle, hold_id=hold_id, actual=actual)
        return _ok(result, "Charged")  # type: ignore[no-any-return]

    def release(self, hold_id: str) -> gen.ReleaseReleaseHold:
        """The job failed: free the hold, charge nothing."""
        return _ok(self._call(self._gql.release, hold_id=hold_id), "Hold")  # type: ignore[no-any-return]


class PricingCatalog(_Scope):
    def catalog(self) -> gen.Pricing:
        return self._call(self._gql.pricing)

    def images(self, model: str, num_images: int = 1) -> gen.ImagePricingImagePricingMediaPricing:
        result = self._call(self._gql.image_pricing, model=model, num_images=num_images)
        return _ok(result, "MediaPricing")  # type: ignore[no-any-return]

    def video(self, model: str, duration: int) -> gen.VideoPricingVideoPricingMediaPricing:
        result = self._call(self._gql.video_pricing, model=model, duration=duration)
        return _ok(result, "MediaPricing")  # type: ignore[no-any-return]


class Meterkit(TenantView):
    """A meterkit gateway at `url` (e.g. http://127.0.0.1:8000) with one API key.

    With a tenant key, `billing`, `status()`, `charge()`... act for that tenant. With an operator
    key, `plans`, `kits`, `primitives`, `tenants`, `keys`, `credits`, `audit`, `webhooks` and `stripe`
    run the control plane (meterkit_client/control.py), and `for_user(tenant_id)` acts for one tenant."""

    def __init__(
        self, url: str, api_key: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout, transport=transport)
        gql = gen.GeneratedClient(url=f"{self.url}/graphql", http_client=cast(Any, self._http))
        super().__init__(gql, None)
        self.plans = Plans(gql, None)
        self.kits = Kits(gql, None)
        self.tenants = Tenants(gql, None)
        self.keys = Keys(gql, None)
        self.credits = Credits(gql, None)
        self.pricing = PricingCatalog(gql, None)
        self.stripe = StripeInbox(gql, None)
        self.primitives = Primitives(gql, None)
        self.audit = Audit(gql, None)
        self.webhooks = Webhooks(gql, None)

    def for_user(self, tenant_id: str) -> TenantView:
        """Acts for one tenant with this (operator) key (the X-Tenant-Id header)."""
        return TenantView(self._gql, tenant_id)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Meterkit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def as_json(value: Any) -> Any:
    """A result as plain JSON data (camelCase field names, as the GraphQL schema spells them)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, BillingUsage):
        return {
            "plan": value.plan,
            "status": value.status,
            "period": {"start": value.period.start.isoformat(), "end": value.period.end.isoformat()},
            "quotas": value.quotas,
            "usage": value.usage,
        }
    return value
