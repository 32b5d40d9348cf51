"""alert policies without quota thresholds of their own hold SQL NULL, not the JSON 'null' that
earlier writes stored (COALESCE with the plan's policy skipped over it, and PostgreSQL's charge
function cannot read 'null' as a list)

Revision ID: 0013_policy_nulls
Revises: 0012_pg_charge
Create Date: 2026-11-28
"""

from alembic import op

revision = "0013_policy_nulls"
down_revision = "0012_pg_charge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE alert_policy SET quota_percents = NULL WHERE quota_percents::text = 'null'")
    else:
        op.execute("UPDATE alert_policy SET quota_percents = NULL WHERE quota_percents = 'null'")


def downgrade() -> None:
    pass  # SQL NULL reads as 'no thresholds of its own' before and after
