"""organization holds, the per-end-user cap and platform tiers: a hold names who holds its amount
(the tenant's own account, the paying organization's, both or neither); the period counter keeps
what an end user's calls cost its organization, which the per-end-user credit cap reads; the
platform's tiers (monthly credits for a platform Stripe price) and each organization's tier.

Existing holds were reserved on their tenant's own account: own_reserved defaults to true and
payer_id to NULL, so every open hold closes exactly as before. Existing counters cost no
organization anything (the default organization is exempt): payer_credits defaults to 0. Plain
ADD COLUMN on both engines (no table rebuild; SQLite accepts a foreign key on an added column whose
default is NULL); the new index serves the organization's read of its expired holds. No tier is
seeded: the demo catalog (app/bootstrap.py) loads free and pro where missing.

Revision ID: 0020_organization_holds
Revises: 0017_organizations
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa

import app.core.types  # noqa: F401

revision = "0020_organization_holds"
down_revision = "0019_org_scoped_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("credit_hold", sa.Column("own_reserved", sa.Boolean(), server_default=sa.true(), nullable=False))
    op.add_column("credit_hold", sa.Column("payer_id", sa.String(length=40), nullable=True))
    op.create_index("ix_credit_hold_payer_open", "credit_hold", ["payer_id", "status", "expires_at"], unique=False)
    op.add_column("usage_counter", sa.Column("payer_credits", sa.BigInteger(), server_default="0", nullable=False))
    op.create_table(
        "platform_tier",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("monthly_credits", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("stripe_price_id", sa.String(length=255), nullable=True),
        sa.Column("archived", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", app.core.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", app.core.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
        sa.UniqueConstraint("stripe_price_id"),
    )
    conn = op.get_bind()
    conn.execute(sa.text("ALTER TABLE organization ADD COLUMN tier_key VARCHAR(64) REFERENCES platform_tier (key)"))
    op.add_column("organization", sa.Column("tier_status", sa.String(length=24), nullable=True))
    op.add_column("organization", sa.Column("tier_subscription_id", sa.String(length=255), nullable=True))
    op.add_column("organization", sa.Column("tier_event_created", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("organization") as batch:
        for column in ("tier_event_created", "tier_subscription_id", "tier_status", "tier_key"):
            batch.drop_column(column)
    op.drop_table("platform_tier")
    op.drop_index("ix_credit_hold_payer_open", table_name="credit_hold")
    with op.batch_alter_table("usage_counter") as batch:
        batch.drop_column("payer_credits")
    with op.batch_alter_table("credit_hold") as batch:
        batch.drop_column("payer_id")
        batch.drop_column("own_reserved")
