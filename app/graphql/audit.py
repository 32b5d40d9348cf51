"""The audit log over GraphQL: operators read it, newest first, with filters."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from app.audit import service
from app.core.ids import parse_id
from app.graphql.context import Info
from app.graphql.pagination import Connection, connection
from app.graphql.rows import FromRow


@strawberry.type
class AuditEntry(FromRow):
    id: strawberry.ID
    at: datetime
    actor_key_id: str | None = strawberry.field(description="The API key that made the change; null: the CLI")
    actor_role: str
    action: str
    entity: str
    entity_id: str
    tenant_id: str | None
    before: JSON | None = strawberry.field(description="The entity before the write; null when it was created")
    after: JSON | None
    detail: JSON | None = strawberry.field(description="The request's own parameters, where the entity lacks them")


@strawberry.type
class AuditEntryConnection(Connection[AuditEntry]):
    pass


@strawberry.type
class AuditQuery:
    @strawberry.field(
        description="Control-plane writes, newest first; every filter is optional. A platform key reads every "
        "entry, an organization key the entries that concern its organization."
    )
    async def audit_log(
        self,
        info: Info,
        first: int = 50,
        after: str | None = None,
        entity: str | None = None,
        entity_key: str | None = None,
        action: str | None = None,
        actor_key_id: str | None = None,
        tenant_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> AuditEntryConnection:
        # entityKey is free-form (a kit's key, a tenant's id...); the two ids are checked as ids.
        key_id = parse_id(actor_key_id, "key", field="actorKeyId") if actor_key_id is not None else None
        tid = parse_id(tenant_id, "ten", field="tenantId") if tenant_id is not None else None
        # An organization key reads the entries that concern its organization (from its key, never input).
        f = service.AuditFilter(
            entity, entity_key, action, key_id, tid, since, until, organization_id=info.context.organization_filter
        )
        rows = await info.context.read(lambda s: service.page(s, f, first, after))
        return connection(AuditEntryConnection, rows, first, lambda r: service.encode_cursor(r.id), AuditEntry.from_row)
