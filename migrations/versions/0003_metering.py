"""metering: usage events (idempotency records), period counters, rate windows, holds

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

import app.core.types  # noqa: F401

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('credit_hold',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('request_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('primitive', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('amount', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
    sa.Column('settled_amount', sa.BigInteger(), nullable=True),
    sa.Column('settle_result', sa.JSON(), nullable=True),
    sa.Column('reference', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('expires_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('closed_at', app.core.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'idempotency_key', name='uq_credit_hold_key')
    )
    op.create_index('ix_credit_hold_open', 'credit_hold', ['tenant_id', 'status', 'expires_at'], unique=False)
    op.create_table('rate_window',
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('primitive', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('window_start', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('calls', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'primitive', 'window_start')
    )
    op.create_table('usage_counter',
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('period_start', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('primitive', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('period_end', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('used', sa.BigInteger(), nullable=False),
    sa.Column('overage', sa.BigInteger(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'period_start', 'primitive')
    )
    op.create_table('usage_event',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), sa.Identity(always=False), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('request_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('primitive', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('credits', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('period_start', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reference', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('result', sa.JSON(), nullable=False),
    sa.Column('created_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'idempotency_key', name='uq_usage_event_key')
    )
    op.create_index('ix_usage_event_tenant_id_id', 'usage_event', ['tenant_id', 'id'], unique=False)



def downgrade() -> None:
    for table in ('usage_event', 'usage_counter', 'rate_window', 'credit_hold'):
        op.drop_table(table)
