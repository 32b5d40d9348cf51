"""Setting a tenant's subscription by hand (an operator, or a tenant's own key) as a command: it
opens and owns its transaction, in which the subscription, the plan's kit, the period record, the
`subscription.changed` alert and the audit entry all commit together. The edges call it through the
unit-of-work runner (app/core/uow.py). A Stripe webhook sets a subscription inside its event's own
transaction, unaudited, with the service (app/integrations/stripe/handlers.py)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from app.audit.service import audited, subscription_target
from app.core.auth import Principal, TenantScope
from app.core.clock import Clock
from app.core.db import unit_of_work
from app.plans.models import Plan
from app.subscriptions import service
from app.subscriptions.models import Subscription
from app.tenants.models import Tenant


def set_subscription(
    engine: Engine, clock: Clock, actor: Principal | None, scope: TenantScope, data: service.SubscriptionInput
) -> tuple[Tenant, Subscription, Plan]:
    # Refused before the transaction opens: a bad period costs no tenant lock.
    service.check_period_end(data, clock.now())
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "setSubscription",
            subscription_target(scope.tenant_id),
            lambda: service.set_subscription(s, clock, scope, data),
        )
