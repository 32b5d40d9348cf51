"""An organization: a company on the platform (in product terms its "operator", "company" or "account").

It pays the platform in credits (its own credit account: the house tenant, below) and owns its
Account Kits, plans, end users (`Tenant`, kind "end_user") and keys. Its credit account reuses the
per-tenant credit machinery (account, buckets, ledger, holds, packs, Checkout, key budgets): each
organization has one house tenant, kind "organization", whose id IS the organization's id, so the
charge of an end user finds the payer's account row as `credit_account.tenant_id = tenant.organization_id`
without a lookup. The house tenant is the organization's own agents' account; listings of end users
leave it out.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Column, Integer, false
from sqlmodel import Field, SQLModel

from app.core.types import ts_column

# The organization an existing database becomes (migration 0017): it owns every kit, plan, tenant and
# key made before organizations existed, with end-user wallets on and platform credits exempt, so all
# of them behave exactly as before. Platform (mk_op_) keys act on it.
DEFAULT_ORG_ID = "org_" + "0" * 32
HOUSE = "organization"  # tenant.kind of an organization's own account
END_USER = "end_user"  # tenant.kind of an organization's end user


class Organization(SQLModel, table=True):
    __tablename__ = "organization"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    external_id: str | None = Field(default=None, max_length=255, unique=True)
    # On: end users hold credits of their own (today's per-tenant wallets), charged beside the organization.
    end_user_wallets: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    # On: the organization's operations are counted, never charged in platform credits.
    platform_credits_exempt: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    # Micro-credits one end user may cost the organization per period; NULL: no cap.
    end_user_credit_cap: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    created_at: datetime = Field(sa_column=ts_column())
    # Its platform tier (app/organizations/tiers.py) as last reflected from the platform's Stripe:
    # NULL until it subscribes to one. The subscription's id and the newest event applied guard it
    # against stale and out-of-order webhooks, as a tenant's subscription row does.
    tier_key: str | None = Field(default=None, foreign_key="platform_tier.key", max_length=64)
    tier_status: str | None = Field(default=None, max_length=24)
    tier_subscription_id: str | None = Field(default=None, max_length=255)
    tier_event_created: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    # Changes with its plans, kits and policies (migration 0025's triggers): see Tenant.terms_version.
    terms_version: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


class PlatformTier(SQLModel, table=True):
    """What the platform sells organizations besides packs (product terms: the credits document's
    free and pro plans): monthly credits on the organization's own account, for a Stripe price of the
    platform's. Not an end-user plan: no kit, no quotas; organizations' end users never see it."""

    __tablename__ = "platform_tier"

    key: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    # Micro-credits granted to the organization's account once per paid period (expiring at its end).
    monthly_credits: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    stripe_price_id: str | None = Field(default=None, max_length=255, unique=True)
    archived: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    created_at: datetime = Field(sa_column=ts_column())
    updated_at: datetime = Field(sa_column=ts_column())
