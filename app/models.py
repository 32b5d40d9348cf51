"""Imports every table so SQLModel.metadata (and Alembic) see the whole schema."""

from app.account_kits.models import AccountKit
from app.credits.models import CreditAccount, CreditBucket, LedgerEntry
from app.plans.models import Plan, PlanQuota
from app.subscriptions.models import Subscription
from app.tenants.models import ApiKey, Tenant

__all__ = [
    "AccountKit",
    "ApiKey",
    "CreditAccount",
    "CreditBucket",
    "LedgerEntry",
    "Plan",
    "PlanQuota",
    "Subscription",
    "Tenant",
]
