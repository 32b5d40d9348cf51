"""The control plane, for an operator key: `client.plans`, `client.kits`, `client.primitives`,
`client.tenants`, `client.keys`, `client.credits`, `client.audit`, `client.webhooks` and
`client.stripe` (the webhook inbox). Each call returns the success type of its GraphQL result or
raises `Refused` / `Unreachable` (meterkit_client/_scope.py)."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from meterkit_client._scope import _credits, _ok, _Scope
from meterkit_client.generated import client as gen
from meterkit_client.generated.input_types import (
    AccountKitInput,
    CreateTenantInput,
    PlanInput,
    PrimitiveInput,
    PrimitiveLimitInput,
    QuotaInput,
)


class _Omitted:
    """An argument left out: the gateway keeps the plan's or kit's value (it is not sent)."""

    def __repr__(self) -> str:
        return "OMITTED"


OMITTED: Any = _Omitted()


def _given(**fields: Any) -> dict[str, Any]:
    # Only what the caller gave is sent: the input model serializes set fields only (exclude_unset).
    return {k: v for k, v in fields.items() if v is not OMITTED}


class Plans(_Scope):
    def upsert(
        self,
        *,
        key: str,
        name: str = OMITTED,
        account_kit_id: str = OMITTED,
        stripe_price_id: str | None = OMITTED,
        quotas: Mapping[str, int] = OMITTED,
        set_quotas: Mapping[str, int] = OMITTED,
        remove_quotas: Sequence[str] = OMITTED,
        period: str = OMITTED,
        overage: str = OMITTED,
        included_credits: Decimal | int | str | None = OMITTED,
        confirm: bool = False,
        dry_run: bool = False,
    ) -> Any:
        """Creates a plan or edits the fields given, idempotent by key; quotas as {"email.send": 1000}.
        A field left out keeps its value; `quotas` replaces the whole set, `set_quotas` adds or changes
        some. A change that removes something raises Refused("CONFIRMATION_REQUIRED") with the changes
        in `result.changes` unless confirm=True; dry_run=True returns the PlanPreview, writing nothing."""
        data = PlanInput.model_validate(
            _given(
                key=key,
                name=name,
                account_kit_id=account_kit_id,
                stripe_price_id=stripe_price_id,
                quotas=OMITTED if quotas is OMITTED else [QuotaInput(primitive=p, quota=q) for p, q in quotas.items()],
                set_quotas=OMITTED
                if set_quotas is OMITTED
                else [QuotaInput(primitive=p, quota=q) for p, q in set_quotas.items()],
                remove_quotas=OMITTED if remove_quotas is OMITTED else list(remove_quotas),
                period=period,
                overage=overage,
                included_credits=included_credits
                if included_credits is OMITTED or included_credits is None
                else _credits(included_credits),
            )
        )
        result = self._call(self._gql.upsert_plan, input=data, confirm=confirm, dry_run=dry_run)
        return _ok(result, "PlanPreview" if dry_run else "Plan")

    def migrate_subscribers(self, key: str) -> Any:
        """Moves every subscriber on an older version of the plan to its newest version."""
        return _ok(self._call(self._gql.migrate_plan_subscribers, key=key), "PlanSubscribersMigrated")

    def list(self, *, include_archived: bool = False) -> builtins.list[gen.PlansPlans]:
        return self._call(self._gql.plans, include_archived=include_archived)

    def get(self, key: str) -> gen.PlanPlan:
        return _ok(self._call(self._gql.plan, key=key), what=f"plan {key!r}")  # type: ignore[no-any-return]


class Kits(_Scope):
    def list(self) -> builtins.list[gen.AccountKitsAccountKits]:
        return self._call(self._gql.account_kits)

    def upsert(
        self,
        *,
        key: str,
        name: str = OMITTED,
        allowed_primitives: Sequence[str] = OMITTED,
        limits: Sequence[PrimitiveLimitInput | Mapping[str, Any]] = OMITTED,
        allowed_connections: Sequence[str] = OMITTED,
        add_allowed_primitives: Sequence[str] = OMITTED,
        remove_allowed_primitives: Sequence[str] = OMITTED,
        add_allowed_connections: Sequence[str] = OMITTED,
        remove_allowed_connections: Sequence[str] = OMITTED,
        confirm: bool = False,
        dry_run: bool = False,
    ) -> Any:
        """Creates a kit or edits the fields given; limits as {"primitive": "email.send",
        "max_quantity_per_call": 50, "calls_per_minute": 120} (either bound may be None). A removal
        needs confirm=True (else Refused("CONFIRMATION_REQUIRED")); dry_run=True returns the preview."""

        def listed(v: Any) -> Any:
            return OMITTED if v is OMITTED else list(v)

        data = AccountKitInput.model_validate(
            _given(
                key=key,
                name=name,
                allowed_primitives=listed(allowed_primitives),
                limits=OMITTED
                if limits is OMITTED
                else [
                    lim if isinstance(lim, PrimitiveLimitInput) else PrimitiveLimitInput.model_validate(dict(lim))
                    for lim in limits
                ],
                allowed_connections=listed(allowed_connections),
                add_allowed_primitives=listed(add_allowed_primitives),
                remove_allowed_primitives=listed(remove_allowed_primitives),
                add_allowed_connections=listed(add_allowed_connections),
                remove_allowed_connections=listed(remove_allowed_connections),
            )
        )
        result = self._call(self._gql.upsert_account_kit, input=data, confirm=confirm, dry_run=dry_run)
        return _ok(result, "AccountKitPreview" if dry_run else "AccountKit")

    def get(self, key: str) -> gen.AccountKitAccountKit:
        return _ok(self._call(self._gql.account_kit, key=key), what=f"kit {key!r}")  # type: ignore[no-any-return]


class Tenants(_Scope):
    def list(self, *, first: int = 50, after: str | None = None) -> gen.TenantsTenants:
        return self._call(self._gql.tenants, first=first, after=after)

    def get(self, tenant_id: str) -> gen.TenantTenant:
        return _ok(self._call(self._gql.tenant, id=tenant_id), what=f"tenant {tenant_id}")  # type: ignore[no-any-return]

    def create(
        self, name: str, *, external_id: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> gen.CreateTenantCreateTenantTenant:
        """Creates a tenant on the default plan with its signup credits."""
        data = CreateTenantInput.model_validate(
            {"name": name, "external_id": external_id, "metadata": dict(metadata) if metadata else None}
        )
        return _ok(self._call(self._gql.create_tenant, input=data), "Tenant")  # type: ignore[no-any-return]


class Keys(_Scope):
    def create(self, tenant_id: str | None = None, *, name: str = "") -> gen.CreateApiKeyCreateApiKeyCreatedApiKey:
        """A tenant key (its secret is shown once, in the result)."""
        result = self._call(self._gql.create_api_key, tenant_id=tenant_id, name=name)
        return _ok(result, "CreatedApiKey")  # type: ignore[no-any-return]

    def revoke(self, key_id: str) -> gen.RevokeApiKeyRevokeApiKeyApiKey:
        return _ok(self._call(self._gql.revoke_api_key, id=key_id), "ApiKey")  # type: ignore[no-any-return]


class Credits(_Scope):
    def grant(
        self,
        tenant_id: str,
        amount: Decimal | int | str,
        *,
        idempotency_key: str,
        expires_at: datetime | None = None,
        reason: str | None = None,
    ) -> gen.GrantCreditsGrantCreditsCreditGrant:
        """Operator: an adjustment grant, once per idempotency key."""
        result = self._call(
            self._gql.grant_credits,
            tenant_id=tenant_id,
            amount=_credits(amount),
            idempotency_key=idempotency_key,
            expires_at=expires_at,
            reason=reason,
        )
        return _ok(result, "CreditGrant")  # type: ignore[no-any-return]


class StripeInbox(_Scope):
    def events(
        self, *, outcome: str | None = None, first: int = 50, after: str | None = None
    ) -> gen.StripeEventsStripeEvents:
        """Operator: the webhook inbox, newest first (outcome="rejected" for what a rule refused)."""
        return self._call(self._gql.stripe_events, outcome=outcome, first=first, after=after)


class Primitives(_Scope):
    """The primitive catalog: what kits, quotas, prices and metered calls may name."""

    def list(self, *, include_retired: bool = True) -> builtins.list[gen.PrimitivesPrimitives]:
        return self._call(self._gql.primitives, include_retired=include_retired)

    def upsert(
        self,
        *,
        key: str,
        name: str,
        unit: str = "call",
        category: str = "other",
        pricing_rule: str = "fixed",
        active: bool = True,
        credits: Decimal | int | str | None = None,
    ) -> gen.UpsertPrimitiveUpsertPrimitivePrimitive:
        """Adds or edits a primitive, idempotent by key; `credits` is the price per unit (fixed) or
        per block (session_tiers), required when such a primitive is new. active=False retires it."""
        data = PrimitiveInput.model_validate(
            {
                "key": key,
                "name": name,
                "unit": unit,
                "category": category,
                "pricing_rule": pricing_rule,
                "active": active,
                "credits": None if credits is None else _credits(credits),
            }
        )
        return _ok(self._call(self._gql.upsert_primitive, input=data), "Primitive")  # type: ignore[no-any-return]


class Audit(_Scope):
    def list(
        self,
        *,
        first: int = 50,
        after: str | None = None,
        entity: str | None = None,
        entity_key: str | None = None,
        action: str | None = None,
        actor_key_id: str | None = None,
        tenant_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> gen.AuditLogAuditLog:
        """Control-plane writes, newest first; every filter is optional (AND)."""
        return self._call(
            self._gql.audit_log,
            first=first,
            after=after,
            entity=entity,
            entity_key=entity_key,
            action=action,
            actor_key_id=actor_key_id,
            tenant_id=tenant_id,
            since=since,
            until=until,
        )


class Webhooks(_Scope):
    """Alert webhooks: endpoints, each delivery with every attempt, replay."""

    def endpoints(self) -> builtins.list[gen.WebhookEndpointsWebhookEndpoints]:
        return self._call(self._gql.webhook_endpoints)

    def deliveries(self, endpoint_id: str, *, first: int = 50) -> builtins.list[gen.WebhookDeliveriesWebhookDeliveries]:
        """An endpoint's deliveries, newest first."""
        return self._call(self._gql.webhook_deliveries, endpoint_id=endpoint_id, first=first)

    def replay(self, delivery_id: int | str) -> gen.ReplayWebhookDeliveryReplayWebhookDeliveryWebhookDelivery:
        """Makes a delivery due now (its attempts stay in the log); the delivery worker sends it."""
        result = self._call(self._gql.replay_webhook_delivery, id=str(delivery_id))
        return _ok(result, "WebhookDelivery")  # type: ignore[no-any-return]
