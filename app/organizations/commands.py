"""Organizations as commands: the platform creates one (with its first key) and sets its switches.
Each owns its transaction and appends its audit entry in it (the first key's secret never reaches
the log)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from app.audit.service import Target, audited
from app.core.auth import Principal
from app.core.clock import Clock
from app.core.db import unit_of_work
from app.organizations import service, tiers
from app.organizations.models import Organization, PlatformTier
from app.tenants.models import ApiKey


def create_organization(
    engine: Engine, clock: Clock, actor: Principal | None, data: service.OrganizationInput, *, signup_micro: int
) -> tuple[Organization, ApiKey, str]:
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "createOrganization",
            lambda made: Target("organization", made[0].id, tenant_id=made[0].id, organization_id=made[0].id),
            lambda: service.create_organization(s, clock, data, signup_micro=signup_micro, caller=actor),
        )


def update_organization(
    engine: Engine, clock: Clock, actor: Principal | None, organization_id: str, switches: service.OrganizationSwitches
) -> Organization:
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "updateOrganization",
            Target("organization", organization_id, organization_id=organization_id),
            lambda: service.update_organization(s, organization_id, switches),
        )


def upsert_tier(engine: Engine, clock: Clock, actor: Principal | None, data: tiers.TierInput) -> PlatformTier:
    """Platform: create or update a tier (idempotent by key)."""
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "upsertPlatformTier",
            Target("platform_tier", data.key),
            lambda: tiers.upsert_tier(s, clock, data),
        )


def archive_tier(engine: Engine, clock: Clock, actor: Principal | None, key: str) -> PlatformTier:
    """Platform: a tier is sold no more (organizations on it keep it)."""
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "archivePlatformTier",
            Target("platform_tier", key),
            lambda: tiers.archive_tier(s, clock, key),
        )
