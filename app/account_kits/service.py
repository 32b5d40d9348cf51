from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel import Session

from app.account_kits.models import AccountKit
from app.account_kits.repository import AccountKitRepository
from app.catalog.repository import known_keys
from app.core.clock import Clock
from app.core.errors import ValidationFailed
from app.core.primitives import validate_connection, validate_pattern, validate_primitive
from app.core.validation import check_key, check_name
from app.organizations.models import DEFAULT_ORG_ID

MAX_LIST = 200


@dataclass
class KitLimit:
    primitive: str
    max_quantity_per_call: int | None = None
    calls_per_minute: int | None = None


@dataclass
class KitInput:
    key: str
    name: str
    allowed_primitives: list[str]
    limits: list[KitLimit] = field(default_factory=list)
    allowed_connections: list[str] = field(default_factory=list)


def upsert_account_kit(
    session: Session, clock: Clock, data: KitInput, organization_id: str = DEFAULT_ORG_ID
) -> AccountKit:
    """Create or replace a kit of the organization. Tenants reference kits, so an edit applies to all of
    them at once. Kit keys are unique per organization: another organization's `kit_pro` is its own."""
    check_key(data.key, field="key")
    check_name(data.name)
    if len(data.allowed_primitives) > MAX_LIST or len(data.allowed_connections) > MAX_LIST:
        raise ValidationFailed("too many entries", field="allowedPrimitives")
    known = known_keys(session.connection())  # kits match against the operator's catalog
    patterns = sorted({validate_pattern(p, known) for p in data.allowed_primitives})
    connections = sorted({validate_connection(c) for c in data.allowed_connections})
    limits: dict[str, dict[str, int | None]] = {}
    for lim in data.limits:
        validate_primitive(lim.primitive, known, field="limits.primitive")
        for name, value in (
            ("maxQuantityPerCall", lim.max_quantity_per_call),
            ("callsPerMinute", lim.calls_per_minute),
        ):
            if value is not None and value < 1:
                raise ValidationFailed(f"{name} must be at least 1", field=f"limits.{name}")
        if lim.primitive in limits:
            raise ValidationFailed(f"duplicate limit for {lim.primitive}", field="limits")
        limits[lim.primitive] = {
            "max_quantity_per_call": lim.max_quantity_per_call,
            "calls_per_minute": lim.calls_per_minute,
        }
    repo = AccountKitRepository(session)
    now = clock.now()
    kit = repo.get(organization_id, data.key)
    if kit is None:
        kit = AccountKit(organization_id=organization_id, key=data.key, name=data.name, created_at=now, updated_at=now)
    kit.name = data.name
    kit.allowed_primitives = patterns
    kit.limits = limits
    kit.allowed_connections = connections
    kit.updated_at = now
    return repo.save(kit)
