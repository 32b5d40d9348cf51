"""org stripe: each organization's own Stripe account (Connect account id, or a restricted key and
its endpoint's signing secret, both stored only encrypted), and the organization an inbox event came
through (NULL: the platform's account, as every event before this migration).

Plain CREATE TABLE and ADD COLUMN on both engines; existing events keep their ids and a NULL
organization, so the platform's webhook dedupes them exactly as before.

Revision ID: 0022_org_stripe
Revises: 0021_plan_versions
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa

import app.core.types  # noqa: F401

revision = "0022_org_stripe"
down_revision = "0021_plan_versions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "organization_stripe",
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.String(length=255), nullable=False),
        sa.Column("api_key_token", sa.String(length=1024), nullable=True),
        sa.Column("webhook_secret_token", sa.String(length=1024), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("connected_at", app.core.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", app.core.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["organization_id"], ["organization.id"]),
        sa.PrimaryKeyConstraint("organization_id"),
        sa.UniqueConstraint("account_id"),
    )
    op.add_column("stripe_event", sa.Column("organization_id", sa.String(length=40), nullable=True))
    op.create_index("ix_stripe_event_organization_id", "stripe_event", ["organization_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_stripe_event_organization_id", table_name="stripe_event")
    with op.batch_alter_table("stripe_event") as batch:
        batch.drop_column("organization_id")
    op.drop_table("organization_stripe")
