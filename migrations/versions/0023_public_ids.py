"""opaque public ids: the table of the install's own secrets, whose `public_ids` row keys the
permutation that writes usage event and ledger entry ids as evt_/led_ + 16 hex digits
(app/core/public_ids.py). No existing table changes: the ids stay integers in the database. The
secret, a random 256-bit value, is written here (the app writes one on first use if it is
missing); a copy of the database keeps it, and so its public ids.

Revision ID: 0023_public_ids
Revises: 0022_org_stripe
Create Date: 2026-12-07
"""

import secrets

from alembic import op
import sqlalchemy as sa

revision = "0023_public_ids"
down_revision = "0022_org_stripe"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_secret",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.execute(
        sa.text("INSERT INTO server_secret (name, value) VALUES ('public_ids', :v)").bindparams(
            v=secrets.token_hex(32)
        )
    )


def downgrade() -> None:
    op.drop_table("server_secret")
