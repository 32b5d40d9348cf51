"""holds count against key budgets: a hold records the key that reserved it and the budget period
it is held in; key budget usage carries what is held; alert events, deliveries and attempts may
concern no tenant (an operator endpoint disabled after sustained failure)

Revision ID: 0011_hold_budget
Revises: 0010_periods
Create Date: 2026-11-28
"""
import re

from alembic import op
import sqlalchemy as sa
import sqlmodel

import app.core.types  # noqa: F401

revision = '0011_hold_budget'
down_revision = '0010_periods'
branch_labels = None
depends_on = None

# Parents before children: webhook_delivery references alert_event, webhook_attempt webhook_delivery.
ALERT_TABLES = ('alert_event', 'webhook_delivery', 'webhook_attempt')
NOT_NULL = 'tenant_id VARCHAR(40) NOT NULL'
NULLABLE = 'tenant_id VARCHAR(40)'


def upgrade() -> None:
    op.add_column('credit_hold', sa.Column('api_key_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
    op.add_column('credit_hold', sa.Column('budget_period_start', app.core.types.UTCDateTime(timezone=True),
                                           nullable=True))
    op.add_column('key_budget_usage', sa.Column('held_credits', sa.BigInteger(), server_default='0', nullable=False))
    op.add_column('key_budget_usage', sa.Column('held_quantity', sa.BigInteger(), server_default='0',
                                                nullable=False))
    # No backfill: holds open at upgrade time were reserved when holds did not count; they settle,
    # release or expire with a NULL budget_period_start and touch no budget row.
    _tenant_nullable(True)


def downgrade() -> None:
    conn = op.get_bind()
    # Events that concern no tenant cannot be kept once tenant_id is required again.
    conn.execute(sa.text('DELETE FROM webhook_attempt WHERE tenant_id IS NULL'))
    conn.execute(sa.text('DELETE FROM webhook_delivery WHERE tenant_id IS NULL'))
    conn.execute(sa.text('DELETE FROM alert_event WHERE tenant_id IS NULL'))
    _tenant_nullable(False)
    with op.batch_alter_table('key_budget_usage') as batch:
        batch.drop_column('held_quantity')
        batch.drop_column('held_credits')
    with op.batch_alter_table('credit_hold') as batch:
        batch.drop_column('budget_period_start')
        batch.drop_column('api_key_id')


def _tenant_nullable(nullable: bool) -> None:
    conn = op.get_bind()
    if conn.dialect.name != 'sqlite':
        for table in ALERT_TABLES:
            op.alter_column(table, 'tenant_id', existing_type=sa.String(40), nullable=nullable)
        return
    # SQLite rebuilds a table to change a column, and refuses (foreign_keys=ON, inside the migration's
    # transaction) to drop a parent whose rows are referenced. So the three tables are rebuilt together:
    # new copies referencing each other, old ones dropped children first, then the copies renamed
    # (a rename rewrites the references of the other copies).
    old, new = (NOT_NULL, NULLABLE) if nullable else (NULLABLE, NOT_NULL)
    ddl: dict[str, str] = {}
    indexes: list[str] = []
    for table in ALERT_TABLES:
        sql = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
                           {'t': table}).scalar_one()
        assert old in sql, (table, sql)
        # A table SQLite has renamed before is spelled quoted in its schema.
        sql = re.sub(rf'^CREATE TABLE "?{table}"? ', f'CREATE TABLE _new_{table} ', sql.replace(old, new))
        for parent in ALERT_TABLES:
            sql = re.sub(rf'REFERENCES "?{parent}"? ', f'REFERENCES _new_{parent} ', sql)
        ddl[table] = sql
        indexes += [r[0] for r in conn.execute(
            sa.text("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t AND sql IS NOT NULL"),
            {'t': table})]
    for table in ALERT_TABLES:
        conn.execute(sa.text(ddl[table]))
        conn.execute(sa.text(f'INSERT INTO _new_{table} SELECT * FROM {table}'))
    for table in reversed(ALERT_TABLES):
        conn.execute(sa.text(f'DROP TABLE {table}'))
    for table in ALERT_TABLES:
        conn.execute(sa.text(f'ALTER TABLE _new_{table} RENAME TO {table}'))
    for sql in indexes:
        conn.execute(sa.text(sql))

