"""One row per billed LLM proxy call: what the usage event (its charge) does not hold. Written in
the same transaction as the charge (app/llm/billing.py), so a call's event and its details commit
or roll back together; a replayed charge writes none."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Identity, Integer, PrimaryKeyConstraint, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.core.types import micro_column, ts_column


class LlmCall(SQLModel, table=True):
    __tablename__ = "llm_call"
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "id", name="llm_call_pkey"),
        # The only index: the row is written with its charge and read by its event.
        UniqueConstraint("tenant_id", "event_id", name="uq_llm_call_event"),
    )

    # Primary key (tenant_id, id) on PostgreSQL; `id` alone on SQLite, its rowid (migration 0024).
    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    )
    tenant_id: str = Field(foreign_key="tenant.id", primary_key=True, max_length=40)
    event_id: int = Field(sa_column=Column(BigInteger, nullable=False))  # usage_event.id of its charge
    api_key_id: str | None = Field(default=None, max_length=40)
    provider: str = Field(max_length=16)  # openrouter | openai | anthropic
    primitive: str = Field(max_length=64)  # llm.passthrough (usage.cost) | llm.tokens (price table)
    requested_model: str | None = Field(default=None, max_length=200)  # as the caller wrote it
    model: str | None = Field(default=None, max_length=200)  # priced as (llm.tokens) or as reported
    input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    output_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    cache_read_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    cache_write_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    cost_usd: str | None = Field(default=None, max_length=40)  # the upstream's usage.cost, exact text
    markup: str | None = Field(default=None, max_length=32)  # llm.passthrough_markup applied, if any
    credits: int = Field(sa_column=micro_column(default=None))
    generation_id: str | None = Field(default=None, max_length=200)
    streamed: bool = Field(default=False)
    disconnected: bool = Field(default=False)  # the client left before the end (billed by the drain)
    created_at: datetime = Field(sa_column=ts_column())
