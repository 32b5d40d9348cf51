"""Recording and reading the audit log. A write is recorded by `audited`: snapshot the target,
run the write, snapshot again, append who/what/before/after, all in the caller's transaction, so
a write that rolls back leaves no entry and an entry never outlives its write."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import and_, insert, select
from sqlalchemy.engine import Connection
from sqlmodel import Session, SQLModel

import app.models  # noqa: F401  (every table in the metadata, for snapshots by name)
from app.audit.models import AuditEntry
from app.core.auth import Principal
from app.core.errors import ValidationFailed

T = TypeVar("T")
AUDIT: Any = AuditEntry.__table__  # type: ignore[attr-defined]
SECRET_COLUMNS = frozenset({"key_hash", "secret"})  # never copied into the log
MAX_PAGE = 200


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def row_snapshot(
    conn: Connection, table: str, column: str, key: str, organization_id: str | None = None
) -> dict[str, Any] | None:
    """A row as plain JSON values, or None when it does not exist (yet, or any more). Rows keyed per
    organization (kits, plans, plan policies) are found with their organization."""
    t = SQLModel.metadata.tables[table]  # typed columns: JSON and times decode alike on both engines
    q = select(t).where(t.c[column] == key)
    if organization_id is not None:
        q = q.where(t.c.organization_id == organization_id)
    row = conn.execute(q).mappings().first()
    if row is None:
        return None
    return {k: _plain(v) for k, v in row.items() if k not in SECRET_COLUMNS}


@dataclass(frozen=True)
class Target:
    """What a write changes: an entity (table), its id, and how to snapshot it."""

    entity: str
    entity_id: str
    tenant_id: str | None = None
    snap: Callable[[Connection], dict[str, Any] | None] | None = None
    organization_id: str | None = None  # the organization the write concerns (its keys read the entry)

    def snapshot(self, conn: Connection) -> dict[str, Any] | None:
        if self.snap is not None:
            return self.snap(conn)
        per_org = self.entity in _PER_ORGANIZATION
        return row_snapshot(
            conn,
            self.entity,
            _KEY_COLUMNS.get(self.entity, "id"),
            self.entity_id,
            self.organization_id if per_org else None,
        )


# Primary-key columns of the audited tables that are not called `id`.
_KEY_COLUMNS = {
    "account_kit": "key",
    "plan": "key",
    "price": "primitive",
    "llm_rate": "model",
    "media_price": "model",
    "pricing_setting": "key",
    "primitive": "key",
    "credit_pack": "key",
    "platform_tier": "key",
    "credit_account": "tenant_id",
    "key_budget": "api_key_id",
}


# Tables whose key is unique per organization only (migration 0018): snapshots need the organization.
_PER_ORGANIZATION = frozenset({"account_kit", "plan"})


def plan_target(organization_id: str, key: str) -> Target:
    def snap(conn: Connection) -> dict[str, Any] | None:
        plan = row_snapshot(conn, "plan", "key", key, organization_id)
        if plan is None:
            return None
        q = SQLModel.metadata.tables["plan_quota"]
        # The newest version's quotas: what the plan is now (older versions keep theirs).
        rows = conn.execute(
            select(q.c.primitive, q.c.quota).where(
                q.c.organization_id == organization_id, q.c.plan_key == key, q.c.version == plan.get("version", 1)
            )
        ).all()
        return {**plan, "quotas": {r[0]: r[1] for r in sorted(rows)}}

    return Target("plan", key, snap=snap, organization_id=organization_id)


def subscription_target(tenant_id: str) -> Target:
    """A subscription set by hand: the subscription row and the plan and kit it gave the tenant."""

    def snap(conn: Connection) -> dict[str, Any] | None:
        tenant = row_snapshot(conn, "tenant", "id", tenant_id) or {}
        return {
            "subscription": row_snapshot(conn, "subscription", "tenant_id", tenant_id),
            "plan_key": tenant.get("plan_key"),
            "account_kit_key": tenant.get("account_kit_key"),
        }

    return Target("subscription", tenant_id, tenant_id=tenant_id, snap=snap)


def audited(
    session: Session,
    actor: Principal | None,
    now: datetime,
    action: str,
    target: Target | Callable[[T], Target],
    fn: Callable[[], T],
    *,
    detail: dict[str, Any] | None = None,
) -> T:
    """Run a control-plane write and append its audit entry in the same transaction. A target that
    depends on the result (a new key's id) is given as a function of the result."""
    conn = session.connection()
    known = target if isinstance(target, Target) else None
    before = known.snapshot(conn) if known is not None else None
    result = fn()
    session.flush()
    t = known if known is not None else target(result)  # type: ignore[operator]
    after = t.snapshot(conn)
    if before != after or before is None:  # a replay that changed nothing is not a write
        append(conn, actor, now, action, t, before, after, detail)
    return result


def append(
    conn: Connection,
    actor: Principal | None,
    now: datetime,
    action: str,
    target: Target,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    detail: dict[str, Any] | None = None,
    *,
    role: str = "cli",  # without an actor: the CLI, or "server" for a write the server decided itself
) -> None:
    conn.execute(
        insert(AUDIT).values(
            at=now,
            actor_key_id=actor.key_id if actor is not None else None,
            actor_role=actor.role if actor is not None else role,
            action=action,
            entity=target.entity,
            entity_id=target.entity_id,
            tenant_id=target.tenant_id,
            organization_id=_organization_of(conn, actor, target),
            before=before,
            after=after,
            detail=_plain(detail) if detail is not None else None,
        )
    )


def _organization_of(conn: Connection, actor: Principal | None, target: Target) -> str | None:
    """An organization's or end user's key acts within its organization; a platform key's write concerns
    the organization its target names, or its tenant's (one lookup, control plane only)."""
    if actor is not None and actor.organization_id is not None:
        return actor.organization_id
    if target.organization_id is not None or target.tenant_id is None:
        return target.organization_id
    t = SQLModel.metadata.tables["tenant"]
    org: str | None = conn.execute(select(t.c.organization_id).where(t.c.id == target.tenant_id)).scalar()
    return org


@dataclass
class AuditFilter:
    entity: str | None = None
    entity_id: str | None = None
    action: str | None = None
    actor_key_id: str | None = None
    tenant_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    organization_id: str | None = None  # an organization key's own entries: set from its key, never input


def encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"aud:{entry_id}".encode()).decode()


def decode_cursor(value: str) -> int:
    try:
        kind, _, n = base64.urlsafe_b64decode(value.encode()).decode().partition(":")
        if kind != "aud":
            raise ValueError
        return int(n)
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed("after is not a valid cursor", field="after") from None


def page(session: Session, f: AuditFilter, first: int, after: str | None) -> list[Any]:
    """Newest first; one statement whatever the filters."""
    if not 1 <= first <= MAX_PAGE:
        raise ValidationFailed(f"first must be between 1 and {MAX_PAGE}", field="first")
    c = AUDIT.c
    conds: list[Any] = []
    for column, value in (
        (c.entity, f.entity),
        (c.entity_id, f.entity_id),
        (c.action, f.action),
        (c.actor_key_id, f.actor_key_id),
        (c.tenant_id, f.tenant_id),
        (c.organization_id, f.organization_id),
    ):
        if value is not None:
            conds.append(column == value)
    if f.since is not None:
        conds.append(c.at >= f.since)
    if f.until is not None:
        conds.append(c.at < f.until)
    if after is not None:
        conds.append(c.id < decode_cursor(after))
    q = select(AUDIT).order_by(c.id.desc()).limit(first + 1)
    if conds:
        q = q.where(and_(*conds))
    return list(session.connection().execute(q).all())  # first + 1: the extra row says a next page exists
