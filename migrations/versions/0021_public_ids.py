"""opaque public ids: the table of the install's own secrets, whose `public_ids` row keys the
permutation that writes usage event and ledger entry ids as evt_/led_ + 16 hex digits
(app/core/public_ids.py). No existing table changes: the ids stay integers in the database; the row
itself is written on first use (a random 256-bit value), so a migrated copy of a database keeps
its ids as they were.

Revision ID: 0021_public_ids
Revises: 0020_organization_holds
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa

revision = "0021_public_ids"
down_revision = "0020_organization_holds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_secret",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("server_secret")
