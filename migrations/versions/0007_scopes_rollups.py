"""keys with scopes and expiry; the key of each usage event; credits on period counters;
hourly usage rollups (backfilled from the events already recorded)

Revision ID: 0007_scopes_rollups
Revises: 0004
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

import app.core.types  # noqa: F401

revision = '0007_scopes_rollups'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_key') as batch:
        batch.add_column(sa.Column('scopes', sa.String(length=32), server_default='read meter manage', nullable=False))
        batch.add_column(sa.Column('expires_at', app.core.types.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table('usage_event') as batch:
        batch.add_column(sa.Column('api_key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
    with op.batch_alter_table('usage_counter') as batch:
        batch.add_column(sa.Column('credits', sa.BigInteger(), server_default='0', nullable=False))
    op.create_table('usage_rollup',
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('hour_start', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('primitive', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('api_key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.Column('credits', sa.BigInteger(), nullable=False),
    sa.Column('events', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('tenant_id', 'hour_start', 'primitive', 'api_key_id')
    )
    # Existing events: counters learn their credits, rollups their hours (keys unknown before now).
    op.execute(
        "UPDATE usage_counter SET credits = COALESCE((SELECT SUM(e.credits) FROM usage_event e "
        "WHERE e.tenant_id = usage_counter.tenant_id AND e.primitive = usage_counter.primitive "
        "AND e.period_start = usage_counter.period_start), 0)"
    )
    if op.get_bind().dialect.name == "sqlite":
        hour = "substr(created_at, 1, 13) || ':00:00.000000'"  # naive-UTC text, as UTCDateTime stores it
    else:
        hour = "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    op.execute(
        "INSERT INTO usage_rollup (tenant_id, hour_start, primitive, api_key_id, quantity, credits, events) "
        f"SELECT tenant_id, {hour}, primitive, '', SUM(quantity), SUM(credits), COUNT(*) FROM usage_event "
        f"GROUP BY tenant_id, {hour}, primitive"
    )


def downgrade() -> None:
    op.drop_table('usage_rollup')
    with op.batch_alter_table('usage_counter') as batch:
        batch.drop_column('credits')
    with op.batch_alter_table('usage_event') as batch:
        batch.drop_column('api_key_id')
    with op.batch_alter_table('api_key') as batch:
        batch.drop_column('expires_at')
        batch.drop_column('scopes')
