"""The primary keys of the tenant's hot tables include tenant_id, the distribution column of a sharded
PostgreSQL (app/core/distribution.py): a distributed table's keys can only be enforced on each node
when they name the column that decides the node.

credit_hold, credit_bucket and credit_reversal (text ids): (id) -> (tenant_id, id), on both databases.
usage_event, ledger_entry and llm_call (integer identities): (id) -> (tenant_id, id) on PostgreSQL.
SQLite keeps `id` alone there: only a single INTEGER PRIMARY KEY numbers itself (the rowid alias),
and SQLite is never distributed. No statement changes: ids stay unique (an identity, or a random
text id), every insert already names tenant_id, and no foreign key refers to these tables.

Revision ID: 0024_distribution_keys
Revises: 0023_public_ids
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0024_distribution_keys"
down_revision = "0023_public_ids"
branch_labels = None
depends_on = None

TEXT_IDS = ("credit_hold", "credit_bucket", "credit_reversal")
IDENTITIES = ("usage_event", "ledger_entry", "llm_call")


def _set_key(table: str, columns: list[str]) -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        # A rebuild (SQLite cannot alter a primary key): the batch copies the rows, indexes and
        # constraints, and its create_primary_key replaces the key.
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.create_primary_key(f"{table}_pkey", columns)
        return
    name = sa.inspect(conn).get_pk_constraint(table).get("name") or f"{table}_pkey"
    op.drop_constraint(name, table, type_="primary")
    op.create_primary_key(f"{table}_pkey", table, columns)


def upgrade() -> None:
    for table in TEXT_IDS:
        _set_key(table, ["tenant_id", "id"])
    if op.get_bind().dialect.name == "postgresql":
        for table in IDENTITIES:
            _set_key(table, ["tenant_id", "id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in IDENTITIES:
            _set_key(table, ["id"])
    for table in TEXT_IDS:
        _set_key(table, ["id"])
