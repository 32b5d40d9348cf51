"""the period of record: each tenant's billing periods (start, end, plan, source); overage
prices on plan quotas and the overage reports owed to Stripe

Revision ID: 0010_periods
Revises: 0009_alerts
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

import app.core.types  # noqa: F401

revision = '0010_periods'
down_revision = '0009_alerts'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('billing_period',
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('start_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('end_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('plan_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('provisional', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('closed_at', app.core.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'start_at')
    )
    op.create_table('overage_report',
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('period_start', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('primitive', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('period_end', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('price_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('identifier', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('created_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reported_at', app.core.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'period_start', 'primitive'),
    sa.UniqueConstraint('identifier', name='uq_overage_report_identifier')
    )
    with op.batch_alter_table('plan_quota') as batch:
        batch.add_column(sa.Column('overage_price_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
    # No backfill: the first charge after the upgrade records the period it computes exactly as
    # before (the subscription's, else the calendar's), so existing counters stay in their period.


def downgrade() -> None:
    with op.batch_alter_table('plan_quota') as batch:
        batch.drop_column('overage_price_id')
    op.drop_table('overage_report')
    op.drop_table('billing_period')
