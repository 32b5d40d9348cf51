"""catalog and controls: the primitive catalog (seeded with the 21 built-ins), connections on usage, per-key budgets

Revision ID: 0008_catalog
Revises: 0004
Create Date: 2026-11-28
"""
from datetime import UTC, datetime

from alembic import op
import sqlalchemy as sa
import sqlmodel

import app.core.types  # noqa: F401

revision = '0008_catalog'
down_revision = '0004'
branch_labels = None
depends_on = None

# The built-in set as it stood at this revision (kept here, not imported: a migration is history).
BUILTIN = (
    ("email.send", "Email send", "email", "email", "fixed"),
    ("search.web", "Web search", "search", "search", "fixed"),
    ("url.read", "URL read", "read", "search", "fixed"),
    ("research.quick", "Research (quick)", "job", "research", "fixed"),
    ("research.thorough", "Research (thorough)", "job", "research", "fixed"),
    ("research.exhaustive", "Research (exhaustive)", "job", "research", "fixed"),
    ("ceo.run", "CEO run (pre-check)", "run", "agents", "fixed"),
    ("stock_photo.search", "Stock photo search", "search", "media", "fixed"),
    ("browser.session.open", "Browser session open", "session", "browser", "fixed"),
    ("browser.session.time", "Browser session time floor", "session", "browser", "session_tiers"),
    ("browser.navigate", "Browser navigate", "action", "browser", "fixed"),
    ("browser.act", "Browser act", "action", "browser", "fixed"),
    ("browser.extract", "Browser extract", "action", "browser", "fixed"),
    ("browser.observe", "Browser observe", "action", "browser", "fixed"),
    ("browser.screenshot", "Browser screenshot", "action", "browser", "fixed"),
    ("browser.signup", "Browser autonomous signup", "action", "browser", "fixed"),
    ("browser.login", "Browser autonomous login", "action", "browser", "fixed"),
    ("llm.tokens", "LLM tokens (orchestration)", "token", "llm", "llm_tokens"),
    ("llm.passthrough", "LLM pass-through (OpenRouter)", "usd", "llm", "usd_markup"),
    ("image.generate", "Image generation", "image", "media", "media_image"),
    ("video.generate", "Video generation", "second", "media", "media_video"),
)


def upgrade() -> None:
    primitive = op.create_table('primitive',
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('unit', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('category', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('pricing_rule', sqlmodel.sql.sqltypes.AutoString(length=24), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    now = datetime.now(UTC)
    op.bulk_insert(primitive, [
        {"key": k, "name": n, "unit": u, "category": c, "pricing_rule": r, "active": True,
         "created_at": now, "updated_at": now}
        for k, n, u, c, r in BUILTIN
    ])


    # Connections enforced: the connection a metered call (or a hold) named.
    op.add_column('usage_event', sa.Column('connection', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
    op.add_column('credit_hold', sa.Column('connection', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))

    # Per-key budgets and the spend counted against them.
    op.create_table('key_budget',
    sa.Column('api_key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('period', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('credit_limit', sa.BigInteger(), nullable=True),
    sa.Column('quantity_limits', sa.JSON(), nullable=False),
    sa.Column('created_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_key.id'], ),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('api_key_id')
    )
    op.create_index(op.f('ix_key_budget_tenant_id'), 'key_budget', ['tenant_id'], unique=False)
    op.create_table('key_budget_usage',
    sa.Column('api_key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('period_start', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('primitive', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('credits', sa.BigInteger(), nullable=False),
    sa.Column('quantity', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_key.id'], ),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('api_key_id', 'period_start', 'primitive')
    )


def downgrade() -> None:
    op.drop_table('key_budget_usage')
    op.drop_index(op.f('ix_key_budget_tenant_id'), table_name='key_budget')
    op.drop_table('key_budget')
    with op.batch_alter_table('credit_hold') as batch_op:
        batch_op.drop_column('connection')
    with op.batch_alter_table('usage_event') as batch_op:
        batch_op.drop_column('connection')
    op.drop_table('primitive')
