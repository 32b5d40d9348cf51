"""Imports every table so SQLModel.metadata (and Alembic) see the whole schema."""

from app.account_kits.models import AccountKit
from app.alerts.models import AlertEvent, AlertPolicy, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.audit.models import AuditEntry
from app.budgets.models import KeyBudget, KeyBudgetUsage
from app.catalog.models import Primitive
from app.core.public_ids import ServerSecret
from app.credits.models import CreditAccount, CreditBucket, CreditHold, CreditPack, CreditReversal, LedgerEntry
from app.integrations.stripe.models import OrganizationStripe, StripeEvent, StripeOperation
from app.llm.models import LlmCall
from app.metering.models import RateWindow, UsageCounter, UsageEvent, UsageRollup
from app.organizations.models import Organization
from app.overage.models import OverageReport
from app.periods.models import BillingPeriod
from app.plans.models import Plan, PlanQuota, PlanVersion
from app.pricing.models import LlmRate, MediaPrice, Price, PricingSetting
from app.subscriptions.models import Subscription
from app.tenants.models import ApiKey, Tenant

__all__ = [
    "BillingPeriod",
    "Organization",
    "OverageReport",
    "OrganizationStripe",
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
    "LlmCall",
    "LlmRate",
    "MediaPrice",
    "Plan",
    "PlanQuota",
    "PlanVersion",
    "Price",
    "PricingSetting",
    "AlertEvent",
    "AlertPolicy",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "AuditEntry",
    "KeyBudget",
    "KeyBudgetUsage",
    "Primitive",
    "ServerSecret",
    "StripeEvent",
    "StripeOperation",
    "Subscription",
    "Tenant",
]
