"""Account Kits: upsert (an edit, never a silent replacement).

An omitted field keeps its value; a list is cleared only when given explicitly (`allowedConnections:
[]`). Tenants reference kits, so an edit applies to all of them at once: removing a primitive
pattern or a connection is refused with ConfirmationRequired listing every change, unless
confirmed; a dry run answers the would-be kit and its changes and writes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from sqlmodel import Session

from app.account_kits.models import AccountKit
from app.account_kits.repository import AccountKitRepository
from app.catalog.repository import known_keys
from app.core.changes import Change, ConfirmationRequired
from app.core.clock import Clock
from app.core.errors import ValidationFailed
from app.core.primitives import validate_connection, validate_pattern, validate_primitive
from app.core.validation import check_key, check_name
from app.organizations.models import DEFAULT_ORG_ID

MAX_LIST = 200


class _Keep:
    """An omitted field of an edit: the kit keeps its value."""

    def __repr__(self) -> str:
        return "KEEP"

    def __bool__(self) -> bool:
        return False  # nothing given


KEEP: Final = _Keep()


@dataclass
class KitLimit:
    primitive: str
    max_quantity_per_call: int | None = None
    calls_per_minute: int | None = None


@dataclass
class KitInput:
    """What an upsert sets; KEEP leaves the kit's value (a new kit needs a name and its primitives).
    The list fields replace the whole list; add_*/remove_* change just the entries they name."""

    key: str
    name: str | _Keep = KEEP
    allowed_primitives: list[str] | _Keep = KEEP
    limits: list[KitLimit] | _Keep = KEEP
    allowed_connections: list[str] | _Keep = KEEP
    add_primitives: list[str] = field(default_factory=list)
    remove_primitives: list[str] = field(default_factory=list)
    add_connections: list[str] = field(default_factory=list)
    remove_connections: list[str] = field(default_factory=list)


@dataclass
class KitEdit:
    kit: AccountKit
    changes: list[Change]
    created: bool


def _merge(current: list[str], replace: list[str] | _Keep, add: list[str], remove: list[str], name: str) -> list[str]:
    out = list(current) if isinstance(replace, _Keep) else list(replace)
    out += add
    for item in remove:
        if item not in out:
            raise ValidationFailed(f"the kit has no {item!r} to remove", field=name)
        out = [x for x in out if x != item]
    return out


def _limits(data: list[KitLimit], known: set[str]) -> dict[str, dict[str, int | None]]:
    limits: dict[str, dict[str, int | None]] = {}
    for lim in data:
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
    return limits


def _limit_text(v: dict[str, Any] | None) -> str | None:
    if v is None:
        return None
    return f"maxQuantityPerCall {v.get('max_quantity_per_call')}, callsPerMinute {v.get('calls_per_minute')}"


def edit_account_kit(session: Session, clock: Clock, data: KitInput, organization_id: str = DEFAULT_ORG_ID) -> KitEdit:
    """The kit this upsert would leave and its changes against the stored one, without writing."""
    check_key(data.key, field="key")
    if not isinstance(data.name, _Keep):
        check_name(data.name)
    stored = AccountKitRepository(session).get(organization_id, data.key)
    if stored is None:
        if isinstance(data.name, _Keep):
            raise ValidationFailed("a new kit needs a name", field="name")
        if isinstance(data.allowed_primitives, _Keep) and not data.add_primitives:
            raise ValidationFailed("a new kit needs its allowedPrimitives", field="allowedPrimitives")
    raw_patterns = _merge(
        stored.allowed_primitives if stored else [],
        data.allowed_primitives,
        data.add_primitives,
        data.remove_primitives,
        "removeAllowedPrimitives",
    )
    raw_connections = _merge(
        stored.allowed_connections if stored else [],
        data.allowed_connections,
        data.add_connections,
        data.remove_connections,
        "removeAllowedConnections",
    )
    if len(raw_patterns) > MAX_LIST or len(raw_connections) > MAX_LIST:
        raise ValidationFailed("too many entries", field="allowedPrimitives")
    known = known_keys(session.connection())  # kits match against the operator's catalog
    patterns = sorted({validate_pattern(p, known) for p in raw_patterns})
    connections = sorted({validate_connection(c) for c in raw_connections})
    limits = (stored.limits if stored else {}) if isinstance(data.limits, _Keep) else _limits(data.limits, known)
    now = clock.now()
    kit = AccountKit(
        organization_id=organization_id,
        key=data.key,
        name=(stored.name if stored else "") if isinstance(data.name, _Keep) else data.name,
        allowed_primitives=patterns,
        limits=dict(limits),
        allowed_connections=connections,
        created_at=stored.created_at if stored else now,
        updated_at=now,
    )
    changes = _diff(stored, kit) if stored is not None else []
    return KitEdit(kit, changes, created=stored is None)


def _diff(stored: AccountKit, kit: AccountKit) -> list[Change]:
    changes: list[Change] = []
    if stored.name != kit.name:
        changes.append(Change("name", stored.name, kit.name))
    for name, before, after, what in (
        ("allowedPrimitives", stored.allowed_primitives, kit.allowed_primitives, "primitive pattern"),
        ("allowedConnections", stored.allowed_connections, kit.allowed_connections, "connection"),
    ):
        for item in sorted(set(before) - set(after)):
            changes.append(
                Change(
                    f"{name}.{item}",
                    item,
                    None,
                    destructive=True,
                    why=f"remove the {what} {item!r}: every tenant on this kit is refused it at once",
                )
            )
        for item in sorted(set(after) - set(before)):
            changes.append(Change(f"{name}.{item}", None, item))
    for primitive in sorted(set(stored.limits) | set(kit.limits)):
        b, a = stored.limits.get(primitive), kit.limits.get(primitive)
        if b != a:
            changes.append(Change(f"limits.{primitive}", _limit_text(b), _limit_text(a)))
    return changes


def upsert_account_kit(
    session: Session, clock: Clock, data: KitInput, organization_id: str = DEFAULT_ORG_ID, *, confirm: bool = False
) -> AccountKit:
    """Create a kit, or edit the fields the input names. Tenants reference kits, so an edit applies to
    all of them at once. Kit keys are unique per organization: another organization's `kit_pro` is its own."""
    edit = edit_account_kit(session, clock, data, organization_id)
    if not confirm and any(c.destructive for c in edit.changes):
        raise ConfirmationRequired("kit", data.key, edit.changes)
    repo = AccountKitRepository(session)
    kit = repo.get(organization_id, data.key)
    if kit is not None and not edit.changes:
        return kit
    w = edit.kit
    if kit is None:
        return repo.save(w)
    kit.name = w.name
    kit.allowed_primitives = w.allowed_primitives
    kit.limits = w.limits
    kit.allowed_connections = w.allowed_connections
    kit.updated_at = w.updated_at
    return repo.save(kit)
