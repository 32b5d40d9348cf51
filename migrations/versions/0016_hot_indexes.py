"""credit_bucket loses ix_credit_bucket_tenant_id: its one column is the prefix of
uq_credit_bucket_grant_key (tenant_id, grant_key), which every query by tenant uses as well
(EXPLAIN QUERY PLAN: the live-bucket read of a charge, the sweep, the check's expired sum, the
PL/pgSQL charge of 0012/0014, which names no index). It was pure write cost: one more b-tree
entry per grant, and on PostgreSQL one more index entry for every bucket update that is not HOT.

The other indexes on the tables a charge writes were measured and kept: each is the only path
of a read: usage_event's (tenant_id, idempotency_key) is the idempotency lookup and (tenant_id,
id) the newest-first history; ledger_entry's (tenant_id, id) is the credit history, its count and
reconcile's newest entry per tenant. The counter, rollup, rate-window and account tables have
their primary key only, and a charge's update of them changes no indexed column.

Revision ID: 0016_hot_indexes
Revises: 0015_pg_charge_batch_once
Create Date: 2026-11-28
"""

from alembic import op

revision = "0016_hot_indexes"
down_revision = "0015_pg_charge_batch_once"
branch_labels = None
depends_on = None



def upgrade() -> None:
    # Plain DROP INDEX on both databases: no table rebuild on SQLite, no lock beyond the index.
    op.execute("DROP INDEX IF EXISTS ix_credit_bucket_tenant_id")


def downgrade() -> None:
    op.create_index("ix_credit_bucket_tenant_id", "credit_bucket", ["tenant_id"], unique=False)
