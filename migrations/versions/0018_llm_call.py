"""llm_call: the details of each LLM proxy call (issue 21): model, tokens, upstream cost, markup
and generation id, one row per billed call, keyed by its usage event. No index but the unique
(tenant_id, event_id): the row is written with the charge and read by event.

Revision ID: 0018_llm_call
Revises: 0017_organizations
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

import app.core.types  # noqa: F401


revision = '0018_llm_call'
down_revision = '0017_organizations'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('llm_call',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), sa.Identity(always=False), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('event_id', sa.BigInteger(), nullable=False),
    sa.Column('api_key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('provider', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('primitive', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('requested_model', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('input_tokens', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('output_tokens', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('cache_read_tokens', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('cache_write_tokens', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('cost_usd', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('markup', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('credits', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('generation_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('streamed', sa.Boolean(), nullable=False),
    sa.Column('disconnected', sa.Boolean(), nullable=False),
    sa.Column('created_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'event_id', name='uq_llm_call_event')
    )


def downgrade() -> None:
    op.drop_table('llm_call')
