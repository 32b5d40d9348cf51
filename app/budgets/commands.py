"""A key's budget as commands: set (replace) and clear. Each opens and owns its transaction and
appends its audit entry in it. The edges call them through the unit-of-work runner
(app/core/uow.py)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from app.audit.service import Target, audited
from app.budgets import service
from app.budgets.models import KeyBudget
from app.core.auth import Principal
from app.core.clock import Clock
from app.core.db import unit_of_work


def set_key_budget(
    engine: Engine, clock: Clock, actor: Principal, key_id: str, data: service.BudgetInput
) -> service.BudgetView:
    """Replace what one key may spend per period; answers the budget with this period's spend."""
    with unit_of_work(engine) as s:

        def write() -> service.BudgetView:
            service.set_key_budget(s, clock, actor, key_id, data)
            return service.key_budget_view(s, clock, actor, key_id)

        return audited(s, actor, clock.now(), "setKeyBudget", Target("key_budget", key_id), write)


def clear_key_budget(engine: Engine, clock: Clock, actor: Principal, key_id: str) -> KeyBudget:
    """Remove a key's budget: its calls are capped only by the tenant's again."""
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "clearKeyBudget",
            Target("key_budget", key_id),
            lambda: service.clear_key_budget(s, actor, key_id),
        )
