"""Imports every table so SQLModel.metadata (and Alembic) see the whole schema."""

from app.account_kits.models import AccountKit
from app.credits.models import CreditAccount, CreditBucket, CreditPack, CreditReversal, LedgerEntry
from app.integrations.stripe.models import StripeEvent, StripeOperation
from app.metering.models import CreditHold, RateWindow, UsageCounter, UsageEvent, UsageRollup
from app.metering.period_models import BillingPeriod
from app.overage.models import OverageReport
from app.plans.models import Plan, PlanQuota
from app.pricing.models import LlmRate, MediaPrice, Price, PricingSetting
from app.subscriptions.models import Subscription
from app.tenants.models import ApiKey, Tenant

__all__ = [
    "BillingPeriod",
    "OverageReport",
    "CreditHold",
    "RateWindow",
    "UsageCounter",
    "UsageEvent",
    "UsageRollup",
    "AccountKit",
    "ApiKey",
    "CreditAccount",
    "CreditBucket",
    "CreditPack",
    "CreditReversal",
    "LedgerEntry",
    "LlmRate",
    "MediaPrice",
    "Plan",
    "PlanQuota",
    "Price",
    "PricingSetting",
    "StripeEvent",
    "StripeOperation",
    "Subscription",
    "Tenant",
]
