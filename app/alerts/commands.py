"""The operator's and tenants' alert settings as commands: create a webhook endpoint, enable or
disable one, set an alert policy. Each opens and owns its transaction and appends its audit entry in
it (an endpoint's signing secret never reaches the log). The edges call them through the
unit-of-work runner (app/core/uow.py)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from app.alerts import service
from app.alerts.models import AlertPolicy, WebhookEndpoint
from app.audit.service import Target, audited, row_snapshot
from app.core.auth import Principal
from app.core.clock import Clock
from app.core.db import unit_of_work
from app.organizations.models import DEFAULT_ORG_ID


def create_endpoint(
    engine: Engine,
    clock: Clock,
    actor: Principal,
    tenant_id: str | None,
    url: str,
    event_types: list[str],
    *,
    allow_private: bool = False,
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint (tenant_id None: an operator's, told about every tenant); its signing
    secret is answered this once."""
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "createWebhookEndpoint",
            lambda made: Target("webhook_endpoint", made[0].id, tenant_id=made[0].tenant_id),
            lambda: service.create_endpoint(s, clock, actor, tenant_id, url, event_types, allow_private=allow_private),
        )


def set_endpoint_active(
    engine: Engine, clock: Clock, actor: Principal, endpoint_id: str, active: bool
) -> WebhookEndpoint:
    """Disable an endpoint, or enable it again after it was disabled for failing."""
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "setWebhookEndpointActive",
            Target("webhook_endpoint", endpoint_id),
            lambda: service.set_active(s, clock, actor, endpoint_id, active),
        )


def set_policy(
    engine: Engine,
    clock: Clock,
    actor: Principal | None,
    *,
    plan_key: str | None,
    tenant_id: str | None,
    quota_percents: list[int] | None,
    low_balance: int | None,
    organization_id: str = DEFAULT_ORG_ID,
) -> AlertPolicy:
    """A plan's alert thresholds, or one tenant's (overriding its plan's, field by field)."""
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "setAlertPolicy",
            _policy_target(organization_id, plan_key, tenant_id),
            lambda: service.set_policy(
                s,
                clock,
                plan_key=plan_key,
                tenant_id=tenant_id,
                quota_percents=quota_percents,
                low_balance=low_balance,
                organization_id=organization_id,
            ),
        )


def _policy_target(organization_id: str, plan_key: str | None, tenant_id: str | None) -> Target:
    if plan_key is not None:
        return Target(
            "alert_policy",
            f"plan:{plan_key}",
            tenant_id=tenant_id,
            snap=lambda conn: row_snapshot(conn, "alert_policy", "plan_key", plan_key, organization_id),
            organization_id=organization_id,
        )
    return Target(
        "alert_policy",
        f"tenant:{tenant_id}",
        tenant_id=tenant_id,
        snap=lambda conn: row_snapshot(conn, "alert_policy", "tenant_id", tenant_id or ""),
    )
