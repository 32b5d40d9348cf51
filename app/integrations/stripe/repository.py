"""All SQL of the Stripe slice except the inbox (inbox.py)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, update
from sqlmodel import Session, col, select

from app.core.auth import TenantScope
from app.integrations.stripe.models import StripeOperation
from app.tenants.models import Tenant


class StripeRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def tenant_for_customer(self, customer_id: str) -> Tenant | None:
        """Our stored Stripe customer -> tenant mapping: the only way an event finds its tenant. Customer
        ids are unique per organization (migration 0018); this webhook is the platform's Stripe account
        and names no organization, so a customer id that several organizations' tenants carry (ids
        of their own Stripe accounts) is not one of its customers: None, as for an unknown one."""
        rows = self.s.exec(select(Tenant).where(Tenant.stripe_customer_id == customer_id).limit(2)).all()
        return rows[0] if len(rows) == 1 else None

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
