"""Tenants and API keys as commands: create a tenant, mint a tenant's or an operator's key, revoke
a key. Each opens and owns its transaction and appends its audit entry in it (a new key's secret
never reaches the log: api_key's snapshot leaves key_hash out); a revoked key's live connections close
when it commits (app/tenants/service.py). The edges call them through the unit-of-work runner
(app/core/uow.py)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Engine

from app.audit.service import Target, audited
from app.core.auth import Principal, TenantScope
from app.core.clock import Clock
from app.core.db import unit_of_work
from app.organizations.models import DEFAULT_ORG_ID
from app.tenants import service
from app.tenants.models import ApiKey, Tenant


def create_tenant(
    engine: Engine,
    clock: Clock,
    actor: Principal | None,
    data: service.TenantInput,
    *,
    default_plan_key: str,
    signup_micro: int,
    organization_id: str = DEFAULT_ORG_ID,
) -> Tenant:
    """An end user of the organization, on the default plan, with its signup credits (wallets on)."""
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "createTenant",
            lambda t: Target("tenant", t.id, tenant_id=t.id),
            lambda: service.create_tenant(
                s,
                clock,
                data,
                default_plan_key=default_plan_key,
                signup_micro=signup_micro,
                organization_id=organization_id,
            ),
        )


def _key_target(made: tuple[ApiKey, str]) -> Target:
    return Target("api_key", made[0].id, tenant_id=made[0].tenant_id)  # the secret never reaches the log


def create_api_key(
    engine: Engine,
    clock: Clock,
    actor: Principal | None,
    scope: TenantScope,
    *,
    name: str,
    scopes: list[str] | None,
    expires_at: datetime | None,
) -> tuple[ApiKey, str]:
    """A key for the tenant in scope: the stored key and its secret, shown this once. The actor is
    the minting key too, whose scopes and lifetime bound the new one's."""
    return _mint(engine, clock, actor, "createApiKey", "tenant", scope, name, scopes, expires_at)


def create_operator_key(
    engine: Engine,
    clock: Clock,
    actor: Principal | None,
    *,
    name: str,
    scopes: list[str] | None,
    expires_at: datetime | None,
) -> tuple[ApiKey, str]:
    """Another operator key (bounded by the minting key as create_api_key's are)."""
    return _mint(engine, clock, actor, "createOperatorKey", "operator", None, name, scopes, expires_at)


def _mint(
    engine: Engine,
    clock: Clock,
    actor: Principal | None,
    action: str,
    role: str,
    scope: TenantScope | None,
    name: str,
    scopes: list[str] | None,
    expires_at: datetime | None,
) -> tuple[ApiKey, str]:
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            action,
            _key_target,
            lambda: service.create_api_key(
                s, clock, role=role, scope=scope, name=name, scopes=scopes, expires_at=expires_at, caller=actor
            ),
        )


def revoke_api_key(engine: Engine, clock: Clock, actor: Principal, key_id: str) -> ApiKey:
    """Revoke a key at once; a tenant may revoke only its own."""
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "revokeApiKey",
            Target("api_key", key_id),
            lambda: service.revoke_api_key(s, clock, actor, key_id),
        )
