"""credits: pricing catalog, credit packs, reversals; seeds the default prices

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
from datetime import UTC, datetime

from alembic import op
import sqlalchemy as sa
import sqlmodel

import app.core.types  # noqa: F401

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('credit_pack',
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('credits', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('price_usd_cents', sa.BigInteger(), nullable=False),
    sa.Column('stripe_price_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('expires_after_days', sa.Integer(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key'),
    sa.UniqueConstraint('stripe_price_id')
    )
    op.create_table('llm_rate',
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('input_per_m', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('output_per_m', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('cache_read_per_m', sa.BigInteger(), nullable=True),
    sa.Column('cache_creation_per_m', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('model')
    )
    op.create_table('media_price',
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('unit_price_usd', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('markup', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('updated_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('model')
    )
    op.create_table('price',
    sa.Column('primitive', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('credits', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('tiers', sa.JSON(), nullable=True),
    sa.Column('updated_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('primitive')
    )
    op.create_table('pricing_setting',
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('value', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('updated_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('credit_reversal',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('entry_id', sa.BigInteger(), nullable=False),
    sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('amount', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('created_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'entry_id', name='uq_credit_reversal_entry'),
    sa.UniqueConstraint('tenant_id', 'idempotency_key', name='uq_credit_reversal_key')
    )
    seed_catalog()


def seed_catalog() -> None:
    # The catalog is data the service needs to answer any price, so the migration seeds it
    # (the default price table); later edits are the operator's and are never overwritten.
    from app.pricing.seed import seed
    from app.settings import Settings

    seed(op.get_bind(), datetime.now(UTC), credit_value_usd=Settings().credit_value_usd)


def downgrade() -> None:
    op.drop_table('credit_reversal')
    op.drop_table('pricing_setting')
    op.drop_table('price')
    op.drop_table('media_price')
    op.drop_table('llm_rate')
    op.drop_table('credit_pack')
