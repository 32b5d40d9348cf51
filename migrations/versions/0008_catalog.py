"""catalog and controls: the primitive catalog (seeded with the 21 built-ins), connections on usage, per-key budgets, the audit log

Revision ID: 0008_catalog
Revises: 0007_scopes_rollups
Create Date: 2026-11-28
"""
from datetime import UTC, datetime

from alembic import op
import sqlalchemy as sa
import sqlmodel

import app.core.types  # noqa: F401

revision = '0008_catalog'
down_revision = '0007_scopes_rollups'
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

    # The audit log of control-plane writes: append-only, like the ledger.
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), sa.Identity(always=False), nullable=False),
    sa.Column('at', app.core.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor_key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('actor_role', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('entity', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('entity_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('before', sa.JSON(), nullable=True),
    sa.Column('after', sa.JSON(), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_audit_log_entity', 'audit_log', ['entity', 'entity_id'], unique=False)
    op.create_index('ix_audit_log_tenant_id', 'audit_log', ['tenant_id'], unique=False)
    op.create_index('ix_audit_log_actor', 'audit_log', ['actor_key_id'], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_AUDIT_GUARD)
    else:
        op.execute("CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
                   "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END")
        op.execute("CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
                   "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END")


PG_AUDIT_GUARD = """
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
"""


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    op.drop_table('audit_log')
    op.drop_table('key_budget_usage')
    op.drop_index(op.f('ix_key_budget_tenant_id'), table_name='key_budget')
    op.drop_table('key_budget')
    with op.batch_alter_table('credit_hold') as batch_op:
        batch_op.drop_column('connection')
    with op.batch_alter_table('usage_event') as batch_op:
        batch_op.drop_column('connection')
    op.drop_table('primitive')
