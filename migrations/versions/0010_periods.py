"""the period of record: each tenant's billing periods (start, end, plan, source)

Revision ID: 0010_periods
Revises: 0007_scopes_rollups
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

import app.core.types  # noqa: F401

revision = '0010_periods'
down_revision = '0007_scopes_rollups'
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
    sa.Column('created_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'start_at')
    )
    # No backfill: the first charge after the upgrade records the period it computes exactly as
    # before (the subscription's, else the calendar's), so existing counters stay in their period.


def downgrade() -> None:
    op.drop_table('billing_period')
