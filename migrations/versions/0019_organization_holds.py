"""organization holds and the per-end-user cap: a hold names who holds its amount (the tenant's own
account, the paying organization's, both or neither), and the period counter keeps what an end
user's calls cost its organization, which the per-end-user credit cap reads.

Existing holds were reserved on their tenant's own account: own_reserved defaults to true and
payer_id to NULL, so every open hold closes exactly as before. Existing counters cost no
organization anything (the default organization is exempt): payer_credits defaults to 0. Plain
ADD COLUMN on both engines (no table rebuild); the new index serves the organization's read of its
expired holds.

Revision ID: 0019_organization_holds
Revises: 0017_organizations
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa

revision = "0019_organization_holds"
down_revision = "0017_organizations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("credit_hold", sa.Column("own_reserved", sa.Boolean(), server_default=sa.true(), nullable=False))
    op.add_column("credit_hold", sa.Column("payer_id", sa.String(length=40), nullable=True))
    op.create_index("ix_credit_hold_payer_open", "credit_hold", ["payer_id", "status", "expires_at"], unique=False)
    op.add_column(
        "usage_counter", sa.Column("payer_credits", sa.BigInteger(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    op.drop_index("ix_credit_hold_payer_open", table_name="credit_hold")
    with op.batch_alter_table("usage_counter") as batch:
        batch.drop_column("payer_credits")
    with op.batch_alter_table("credit_hold") as batch:
        batch.drop_column("payer_id")
        batch.drop_column("own_reserved")
