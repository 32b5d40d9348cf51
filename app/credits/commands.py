"""The operator's credit use cases as commands: grant, reverse an entry, upsert a pack.

Each opens and owns its transaction and appends its audit entry in it (app/audit/service.py
`audited`); the alert and live notification of a grant or reversal commit with it (app/credits/ledger.py
emits them). The edges call them through the unit-of-work runner,
`await uow.call(commands.grant, engine, clock, actor, scope, ..., retry=True)` (app/core/uow.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine

from app.audit.service import Target, audited
from app.core.auth import Principal, TenantScope
from app.core.clock import Clock
from app.core.db import unit_of_work
from app.credits import packs, service
from app.credits.ledger import Reversal
from app.credits.models import CreditPack
from app.tenants.models import Tenant
from app.tenants.repository import TenantRepository


@dataclass(frozen=True)
class Granted:
    bucket_id: str
    created: bool  # False: the idempotency key had already granted
    tenant: Tenant | None


@dataclass(frozen=True)
class Reversed:
    reversal: Reversal
    tenant: Tenant | None


def _account(scope: TenantScope) -> Target:
    return Target("credit_account", scope.tenant_id, tenant_id=scope.tenant_id)


def grant(
    engine: Engine,
    clock: Clock,
    actor: Principal | None,
    scope: TenantScope,
    *,
    amount: int,
    idempotency_key: str,
    expires_at: datetime | None = None,
    reason: str | None = None,
) -> Granted:
    """An operator adjustment bucket, once per idempotency key."""
    detail = {"amount": amount, "idempotencyKey": idempotency_key, "reason": reason, "expiresAt": expires_at}
    with unit_of_work(engine) as s:

        def write() -> Granted:
            bucket_id, created = service.grant_credits(
                s, scope, clock, amount=amount, idempotency_key=idempotency_key, expires_at=expires_at, reason=reason
            )
            return Granted(bucket_id, created, TenantRepository(s).get(scope))

        return audited(s, actor, clock.now(), "grantCredits", _account(scope), write, detail=detail)


def reverse_entry(
    engine: Engine,
    clock: Clock,
    actor: Principal | None,
    scope: TenantScope,
    *,
    entry_id: int,
    reason: str,
    idempotency_key: str,
) -> Reversed:
    """Correct a ledger entry by appending its reversal (at most once)."""
    detail = {"entryId": entry_id, "reason": reason, "idempotencyKey": idempotency_key}
    with unit_of_work(engine) as s:

        def write() -> Reversed:
            rev = service.reverse(s, scope, clock, entry_id=entry_id, reason=reason, idempotency_key=idempotency_key)
            return Reversed(rev, TenantRepository(s).get(scope))

        return audited(s, actor, clock.now(), "reverseCreditEntry", _account(scope), write, detail=detail)


def upsert_pack(engine: Engine, clock: Clock, actor: Principal | None, data: packs.PackInput) -> CreditPack:
    """Create or update a credit pack (idempotent by key)."""
    with unit_of_work(engine) as s:
        target = Target("credit_pack", data.key)
        return audited(s, actor, clock.now(), "upsertCreditPack", target, lambda: packs.upsert_pack(s, clock, data))
