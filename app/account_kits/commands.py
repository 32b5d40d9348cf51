"""Upserting an account kit as a command: it opens and owns its transaction and appends its audit
entry in it. The edges call it through the unit-of-work runner (app/core/uow.py)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from app.account_kits import service
from app.account_kits.models import AccountKit
from app.audit.service import Target, audited
from app.core.auth import Principal
from app.core.clock import Clock
from app.core.db import unit_of_work
from app.organizations.models import DEFAULT_ORG_ID


def upsert_account_kit(
    engine: Engine,
    clock: Clock,
    actor: Principal | None,
    data: service.KitInput,
    organization_id: str = DEFAULT_ORG_ID,
    confirm: bool = False,
) -> AccountKit:
    """Create a kit or edit the fields given; an edit applies at once to every tenant using it.
    A removal needs confirm (service.upsert_account_kit); refused, nothing is written."""
    with unit_of_work(engine) as s:
        return audited(
            s,
            actor,
            clock.now(),
            "upsertAccountKit",
            Target("account_kit", data.key, organization_id=organization_id),
            lambda: service.upsert_account_kit(s, clock, data, organization_id, confirm=confirm),
        )
