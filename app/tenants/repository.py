from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from app.core.auth import TenantScope
from app.organizations.models import END_USER
from app.tenants.models import ApiKey, Tenant


class TenantRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, scope: TenantScope) -> Tenant | None:
        return self.s.get(Tenant, scope.tenant_id)

    def exists(self, tenant_id: str) -> bool:
        """Only the auth layer asks this, before it mints a scope."""
        return self.s.get(Tenant, tenant_id) is not None

    def owned_by(self, tenant_id: str, organization_id: str) -> bool:
        """Is the tenant an end user of this organization? (The auth layer, for X-Tenant-Id.)"""
        row = self.s.get(Tenant, tenant_id)
        return row is not None and row.kind == END_USER and row.organization_id == organization_id

    def lock(self, scope: TenantScope) -> Tenant | None:
        return self.s.exec(select(Tenant).where(Tenant.id == scope.tenant_id).with_for_update()).first()

    def get_many(self, ids: Sequence[str]) -> dict[str, Tenant]:
        rows = self.s.exec(select(Tenant).where(col(Tenant.id).in_(list(ids)))).all()
        return {r.id: r for r in rows}

    def by_external_id(self, organization_id: str, external_id: str) -> Tenant | None:
        """External ids are unique per organization (migration 0018)."""
        return self.s.exec(
            select(Tenant).where(Tenant.organization_id == organization_id, Tenant.external_id == external_id)
        ).first()

    def by_stripe_customer(self, customer_id: str, organization_id: str | None = None) -> Tenant | None:
        """The tenant of a Stripe customer within an organization. Without one (the platform's Stripe
        webhook, which names no organization), the customer's only tenant: several organizations'
        tenants carrying the same id (each organization's own Stripe account) are not this webhook's,
        so None."""
        q = select(Tenant).where(Tenant.stripe_customer_id == customer_id)
        if organization_id is not None:
            return self.s.exec(q.where(Tenant.organization_id == organization_id)).first()
        rows = self.s.exec(q.limit(2)).all()
        return rows[0] if len(rows) == 1 else None

    def page(
        self,
        first: int,
        after: tuple[datetime, str] | None,
        search: str | None = None,
        organization_id: str | None = None,
    ) -> list[Tenant]:
        """End users only (an organization's own house account is not one); of one organization when given."""
        q = select(Tenant).where(Tenant.kind == END_USER).order_by(col(Tenant.created_at), col(Tenant.id)).limit(first)
        if organization_id is not None:
            q = q.where(Tenant.organization_id == organization_id)
        if search is not None:
            q = q.where(
                or_(
                    col(Tenant.name).icontains(search, autoescape=True),
                    col(Tenant.external_id).icontains(search, autoescape=True),
                    col(Tenant.plan_key).icontains(search, autoescape=True),
                )
            )
        if after is not None:
            at, tid = after
            q = q.where(or_(col(Tenant.created_at) > at, and_(col(Tenant.created_at) == at, col(Tenant.id) > tid)))
        return list(self.s.exec(q).all())

    def add(self, tenant: Tenant) -> Tenant:
        self.s.add(tenant)
        self.s.flush()
        return tenant


class ApiKeyRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def by_hash(self, key_hash: str) -> ApiKey | None:
        return self.s.exec(select(ApiKey).where(ApiKey.key_hash == key_hash)).first()

    def get(self, key_id: str) -> ApiKey | None:
        return self.s.get(ApiKey, key_id)

    def get_many(self, ids: Sequence[str]) -> dict[str, ApiKey]:
        rows = self.s.exec(select(ApiKey).where(col(ApiKey.id).in_(list(ids)))).all()
        return {r.id: r for r in rows}

    def any_operator(self) -> bool:
        return self.s.exec(select(ApiKey.id).where(ApiKey.kind == "operator").limit(1)).first() is not None

    def add(self, key: ApiKey) -> ApiKey:
        self.s.add(key)
        self.s.flush()
        return key
