"""The audit log: one row per control-plane write, appended in the same transaction as the write.
Append-only like the ledger: the database refuses UPDATE and DELETE (migration 0008)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Identity, Index, Integer
from sqlmodel import Field, SQLModel

from app.core.types import ts_column


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_entity", "entity", "entity_id"),
        Index("ix_audit_log_tenant_id", "tenant_id"),
        Index("ix_audit_log_actor", "actor_key_id"),
        Index("ix_audit_log_organization", "organization_id", "id"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    )
    at: datetime = Field(sa_column=ts_column())
    actor_key_id: str | None = Field(default=None, max_length=40)  # NULL: the CLI or the server itself
    actor_role: str = Field(max_length=16)  # operator | tenant | cli | server (a write it decided itself)
    action: str = Field(max_length=64)  # the mutation or command, e.g. upsertPlan
    entity: str = Field(max_length=32)  # the table written, e.g. plan
    entity_id: str = Field(max_length=200)
    tenant_id: str | None = Field(default=None, max_length=40)  # the tenant it concerns, if any
    # The organization it concerns (its keys read these entries): the acting key's, or the target's for
    # a platform key's write on an organization. NULL: the platform's own catalog, or an entry written
    # before migration 0018 (the log is append-only, so those are not backfilled: the platform reads them).
    organization_id: str | None = Field(default=None, max_length=40)
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    detail: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
