"""All SQL of the Stripe slice except the inbox (inbox.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, update
from sqlmodel import Session, col, select

from app.core.auth import TenantScope
from app.credits.models import CreditPack
from app.integrations.stripe.models import OrganizationStripe, StripeOperation
from app.organizations.models import HOUSE, Organization, PlatformTier
from app.plans.models import Plan
from app.subscriptions.models import Subscription
from app.tenants.models import Tenant

# The Stripe account an object lives on: the platform's, or an organization's own (its id).
PLATFORM = "platform"


class StripeRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def tenant_for_customer(self, customer_id: str, account: str = PLATFORM) -> Tenant | None:
        """Our stored Stripe customer -> tenant mapping: the only way an event finds its tenant, and only
        among the tenants whose customers live on the account the event came through (`account`). Customer
        ids are unique per organization only (migration 0018), so a customer id that several tenants of
        that account carry is none of them: None, as for an unknown one."""
        rows = self.s.exec(select(Tenant).where(Tenant.stripe_customer_id == customer_id).limit(20)).all()
        accounts = self._tenant_accounts(list(rows))
        mine = [t for t in rows if accounts[t.id] == account]
        return mine[0] if len(mine) == 1 else None

    # ---------------------------------------------------------------- which account an object lives on

    def _tenant_accounts(self, tenants: list[Tenant]) -> dict[str, str]:
        """An organization's own (house) account buys the platform's packs and tiers: the platform's
        Stripe. An end user's objects live on its organization's own Stripe once it connected one."""
        orgs = {t.organization_id for t in tenants if t.kind != HOUSE}
        connected = (
            set(
                self.s.exec(
                    select(OrganizationStripe.organization_id).where(
                        col(OrganizationStripe.organization_id).in_(sorted(orgs))
                    )
                ).all()
            )
            if orgs
            else set()
        )
        return {
            t.id: t.organization_id if t.kind != HOUSE and t.organization_id in connected else PLATFORM for t in tenants
        }

    def _accounts_of_tenants(self, tenant_ids: list[str]) -> set[str]:
        if not tenant_ids:
            return set()
        tenants = list(self.s.exec(select(Tenant).where(col(Tenant.id).in_(sorted(set(tenant_ids))))).all())
        return set(self._tenant_accounts(tenants).values())

    def customer_accounts(self, customer_id: str) -> set[str]:
        rows = list(self.s.exec(select(Tenant).where(Tenant.stripe_customer_id == customer_id).limit(20)).all())
        return set(self._tenant_accounts(rows).values())

    def subscription_accounts(self, subscription_id: str) -> set[str]:
        tenant_ids = list(
            self.s.exec(
                select(Subscription.tenant_id).where(Subscription.stripe_subscription_id == subscription_id).limit(20)
            ).all()
        )
        out = self._accounts_of_tenants(tenant_ids)
        tier = self.s.exec(
            select(Organization.id).where(Organization.tier_subscription_id == subscription_id).limit(1)
        ).first()
        return out | ({PLATFORM} if tier is not None else set())

    def operation_accounts(self, object_or_op_id: str) -> set[str]:
        """A Checkout we opened, by its cs_ id or by our operation id (its client_reference_id)."""
        tenant_ids = list(
            self.s.exec(
                select(StripeOperation.tenant_id)
                .where(
                    or_(
                        col(StripeOperation.stripe_object_id) == object_or_op_id,
                        col(StripeOperation.id) == object_or_op_id,
                    )
                )
                .limit(20)
            ).all()
        )
        return self._accounts_of_tenants(tenant_ids)

    def price_accounts(self, price_id: str) -> set[str]:
        """A plan's price lives on its organization's account (the platform's when it connected none);
        packs and tiers are the platform's."""
        out: set[str] = set()
        orgs = set(self.s.exec(select(Plan.organization_id).where(Plan.stripe_price_id == price_id).limit(50)).all())
        if orgs:
            connected = set(
                self.s.exec(
                    select(OrganizationStripe.organization_id).where(
                        col(OrganizationStripe.organization_id).in_(sorted(orgs))
                    )
                ).all()
            )
            out |= {o if o in connected else PLATFORM for o in orgs}
        platform_own: Any = [
            select(CreditPack.key).where(CreditPack.stripe_price_id == price_id).limit(1),
            select(PlatformTier.key).where(PlatformTier.stripe_price_id == price_id).limit(1),
        ]
        if any(self.s.exec(q).first() is not None for q in platform_own):
            out.add(PLATFORM)
        return out

    def store_customer(self, scope: TenantScope, customer_id: str) -> str:
        """Record the tenant's customer unless one is already recorded; returns the one that holds."""
        self.s.execute(
            update(Tenant)
            .where(and_(col(Tenant.id) == scope.tenant_id, col(Tenant.stripe_customer_id).is_(None)))
            .values(stripe_customer_id=customer_id)
        )
        tenant = self.s.get(Tenant, scope.tenant_id)
        assert tenant is not None
        self.s.refresh(tenant)
        assert tenant.stripe_customer_id is not None
        return tenant.stripe_customer_id

    def replace_customer(self, scope: TenantScope, gone: str, customer_id: str) -> str:
        """Swap the tenant's customer that Stripe no longer knows for a new one, unless another
        request swapped it first; returns the one that holds."""
        self.s.execute(
            update(Tenant)
            .where(and_(col(Tenant.id) == scope.tenant_id, col(Tenant.stripe_customer_id) == gone))
            .values(stripe_customer_id=customer_id)
        )
        tenant = self.s.get(Tenant, scope.tenant_id)
        assert tenant is not None
        self.s.refresh(tenant)
        return tenant.stripe_customer_id or customer_id

    def pending_operation(self, scope: TenantScope, kind: str, target: str, since: datetime) -> StripeOperation | None:
        q = (
            select(StripeOperation)
            .where(
                StripeOperation.tenant_id == scope.tenant_id,
                StripeOperation.kind == kind,
                StripeOperation.target == target,
                StripeOperation.status == "pending",
                col(StripeOperation.created_at) >= since,
            )
            .order_by(col(StripeOperation.created_at).desc())
            .limit(1)
        )
        return self.s.exec(q).first()

    def operation(self, op_id: str) -> StripeOperation | None:
        return self.s.get(StripeOperation, op_id)

    def operation_for_object(self, stripe_object_id: str) -> StripeOperation | None:
        return self.s.exec(select(StripeOperation).where(StripeOperation.stripe_object_id == stripe_object_id)).first()

    def save(self, op: StripeOperation) -> StripeOperation:
        self.s.add(op)
        self.s.flush()
        return op
