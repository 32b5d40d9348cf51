"""The operator's plan use cases as commands: upsert and archive. Each opens and owns its
transaction and appends its audit entry (the plan with its quotas, before and after) in it. The
edges call them through the unit-of-work runner (app/core/uow.py)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from app.audit.service import audited, plan_target
from app.core.auth import Principal
from app.core.clock import Clock
from app.core.db import unit_of_work
from app.organizations.models import DEFAULT_ORG_ID
from app.plans import service
from app.plans.models import Plan


def upsert_plan(
    engine: Engine,
    clock: Clock,
    actor: Principal | None,
    data: service.PlanInput,
    organization_id: str = DEFAULT_ORG_ID,
    confirm: bool = False,
) -> Plan:
    """Create a plan of the organization or edit the fields given: idempotent by key. A change that
    takes something away needs confirm (service.upsert_plan); refused, nothing is written."""
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "upsertPlan",
            plan_target(organization_id, data.key),
            lambda: service.upsert_plan(s, clock, data, organization_id, confirm=confirm),
        )


def archive_plan(
    engine: Engine, clock: Clock, actor: Principal | None, key: str, organization_id: str = DEFAULT_ORG_ID
) -> Plan:
    """An archived plan takes no new subscribers; current ones keep it."""
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "archivePlan",
            plan_target(organization_id, key),
            lambda: service.archive_plan(s, clock, key, organization_id),
        )


def migrate_subscribers(
    engine: Engine, clock: Clock, actor: Principal | None, key: str, organization_id: str = DEFAULT_ORG_ID
) -> int:
    """Every subscriber of the plan on an older version moves to the newest, now."""
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "migratePlanSubscribers",
            plan_target(organization_id, key),
            lambda: service.migrate_subscribers(s, clock, key, organization_id),
            detail={"plan": key},
        )
