"""alerts: webhook endpoints, the alert outbox, deliveries and their attempts, alert policies

Revision ID: 0009_alerts
Revises: 0008_catalog
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

import app.core.types  # noqa: F401

revision = '0009_alerts'
down_revision = '0008_catalog'
branch_labels = None
depends_on = None

SERIAL = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('webhook_endpoint',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('url', sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=False),
    sa.Column('secret', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('event_types', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('consecutive_failures', sa.Integer(), nullable=False),
    sa.Column('disabled_reason', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('created_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_webhook_endpoint_tenant_id'), 'webhook_endpoint', ['tenant_id'], unique=False)
    op.create_table('alert_event',
    sa.Column('id', SERIAL, sa.Identity(always=False), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('dedupe_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('fanned_out', sa.Boolean(), nullable=False),
    sa.Column('created_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'dedupe_key', name='uq_alert_event_dedupe')
    )
    op.create_index('ix_alert_event_pending', 'alert_event', ['fanned_out', 'id'], unique=False)
    op.create_table('webhook_delivery',
    sa.Column('id', SERIAL, sa.Identity(always=False), nullable=False),
    sa.Column('event_id', SERIAL, nullable=False),
    sa.Column('endpoint_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', app.core.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('created_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['alert_event.id'], ),
    sa.ForeignKeyConstraint(['endpoint_id'], ['webhook_endpoint.id'], ),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id', 'endpoint_id', name='uq_webhook_delivery')
    )
    op.create_index('ix_webhook_delivery_due', 'webhook_delivery', ['status', 'next_attempt_at'], unique=False)
    op.create_index(op.f('ix_webhook_delivery_endpoint_id'), 'webhook_delivery', ['endpoint_id'], unique=False)
    op.create_table('webhook_attempt',
    sa.Column('id', SERIAL, sa.Identity(always=False), nullable=False),
    sa.Column('delivery_id', SERIAL, nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['delivery_id'], ['webhook_delivery.id'], ),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_webhook_attempt_delivery_id'), 'webhook_attempt', ['delivery_id'], unique=False)
    op.create_table('alert_policy',
    sa.Column('id', SERIAL, sa.Identity(always=False), nullable=False),
    sa.Column('plan_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('quota_percents', sa.JSON(), nullable=True),
    sa.Column('low_balance', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['plan_key'], ['plan.key'], ),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('plan_key'),
    sa.UniqueConstraint('tenant_id')
    )


def downgrade() -> None:
    op.drop_table('alert_policy')
    op.drop_table('webhook_attempt')
    op.drop_table('webhook_delivery')
    op.drop_table('alert_event')
    op.drop_table('webhook_endpoint')
