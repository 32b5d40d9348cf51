"""Deny by default: every root field says who may call it (operator and/or tenant keys) and
which key scope it needs (read, meter, manage), here and only here. A field missing from this
catalog is refused at run time and fails a test; the scope check itself is app/core/auth.py's
`require_scope`, shared with the REST routes."""

from __future__ import annotations

from typing import Any, NamedTuple

from graphql import FieldNode, GraphQLError, OperationDefinitionNode
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from app.core.auth import Role, Scope, ScopeDenied, require_scope

# "operator" is the platform (PLATFORM in the docs); "organization" a company on it; "tenant" an end user.
OP: frozenset[Role] = frozenset({"operator"})
TENANT: frozenset[Role] = frozenset({"tenant"})
BOTH: frozenset[Role] = frozenset({"operator", "tenant"})
# The control plane of the organization's own kits, plans and end users: the platform (acting on the
# default organization) and the organization itself.
OWNER: frozenset[Role] = frozenset({"operator", "organization"})
# The tenant in scope: an end user's key, X-Tenant-Id, or an organization key's own account.
ALL: frozenset[Role] = frozenset({"operator", "organization", "tenant"})


class Rule(NamedTuple):
    roles: frozenset[Role]
    scope: Scope


READ: Scope = "read"
METER: Scope = "meter"
MANAGE: Scope = "manage"

CATALOG: dict[str, Rule] = {
    # Control plane: reads
    "Query.accountKits": Rule(OWNER, READ),
    "Query.accountKit": Rule(OWNER, READ),
    "Query.plans": Rule(ALL, READ),
    "Query.plan": Rule(ALL, READ),
    "Query.tenants": Rule(OWNER, READ),
    "Query.tenant": Rule(ALL, READ),
    "Query.tenantByExternalId": Rule(OWNER, READ),
    "Query.viewer": Rule(ALL, READ),
    # Control plane: writes
    "Mutation.upsertAccountKit": Rule(OWNER, MANAGE),
    "Mutation.upsertPlan": Rule(OWNER, MANAGE),
    "Mutation.archivePlan": Rule(OWNER, MANAGE),
    "Mutation.createTenant": Rule(OWNER, MANAGE),
    "Mutation.createApiKey": Rule(ALL, MANAGE),
    "Mutation.createOperatorKey": Rule(OP, MANAGE),
    "Mutation.revokeApiKey": Rule(ALL, MANAGE),
    "Mutation.setSubscription": Rule(OWNER, MANAGE),
    # Metering: the tenant in scope (a tenant key, or an operator with X-Tenant-Id)
    "Query.check": Rule(ALL, METER),
    "Query.usageHistory": Rule(ALL, READ),
    "Query.usageSeries": Rule(ALL, READ),
    "Query.periods": Rule(ALL, READ),
    "Query.overageReports": Rule(OP, READ),
    "Mutation.charge": Rule(ALL, METER),
    "Mutation.chargeBatch": Rule(ALL, METER),
    "Mutation.reserve": Rule(ALL, METER),
    "Mutation.settle": Rule(ALL, METER),
    "Mutation.release": Rule(ALL, METER),
    # Credits and pricing: balances and history of the tenant in scope; the catalog is public to keys
    "Query.status": Rule(ALL, READ),
    "Query.creditHistory": Rule(ALL, READ),
    "Query.creditPacks": Rule(ALL, READ),
    "Query.prices": Rule(ALL, READ),
    "Query.llmRates": Rule(ALL, READ),
    "Query.mediaPrices": Rule(ALL, READ),
    "Query.pricingSettings": Rule(ALL, READ),
    "Query.imagePricing": Rule(ALL, READ),
    "Query.videoPricing": Rule(ALL, READ),
    "Query.priceQuote": Rule(ALL, READ),
    "Query.reconcile": Rule(OP, READ),
    "Mutation.grantCredits": Rule(OP, MANAGE),
    "Mutation.reverseCreditEntry": Rule(OP, MANAGE),
    "Mutation.upsertCreditPack": Rule(OP, MANAGE),
    "Mutation.setPrice": Rule(OP, MANAGE),
    "Mutation.setLlmRate": Rule(OP, MANAGE),
    "Mutation.setMediaPrice": Rule(OP, MANAGE),
    "Mutation.setPricingSetting": Rule(OP, MANAGE),
    # The primitive catalog (issue 11): readable by every key, edited by operators
    "Query.primitives": Rule(ALL, READ),
    "Mutation.upsertPrimitive": Rule(OP, MANAGE),
    # Per-key budgets (issue 11): a tenant budgets its own keys, an operator any tenant key
    "Query.keyBudget": Rule(BOTH, READ),
    "Mutation.setKeyBudget": Rule(BOTH, MANAGE),
    "Mutation.clearKeyBudget": Rule(BOTH, MANAGE),
    # The audit log of control-plane writes (issue 11): operators only
    "Query.auditLog": Rule(OP, READ),
    # Alerts as signed webhooks (issue 11): endpoints for operators and tenants; the log and replay for operators
    "Query.webhookEndpoints": Rule(BOTH, READ),
    "Query.webhookDeliveries": Rule(OP, READ),
    "Mutation.createWebhookEndpoint": Rule(BOTH, MANAGE),
    "Mutation.setWebhookEndpointActive": Rule(BOTH, MANAGE),
    "Mutation.replayWebhookDelivery": Rule(OP, MANAGE),
    "Mutation.setAlertPolicy": Rule(OP, MANAGE),
    # Stripe: money in for the tenant in scope (a tenant key, or an operator with X-Tenant-Id)
    "Mutation.purchaseCreditPack": Rule(ALL, MANAGE),
    "Mutation.changePlan": Rule(ALL, MANAGE),  # an organization's own key: a platform tier
    # Stripe: the webhook inbox (what each event did), operators only
    "Query.stripeEvents": Rule(OP, READ),
    # Live updates (graphql-transport-ws): the tenant in scope; every tenant for operators
    "Subscription.balanceChanged": Rule(ALL, READ),
    "Subscription.usageChanged": Rule(ALL, READ),
    "Subscription.tenantActivity": Rule(OP, READ),
    # Organizations (issue 19): the platform creates and switches them; an organization reads itself
    "Query.organizations": Rule(OP, READ),
    "Query.organization": Rule(frozenset({"operator", "organization"}), READ),
    "Mutation.createOrganization": Rule(OP, MANAGE),
    "Mutation.updateOrganization": Rule(OP, MANAGE),
    # Platform tiers: the platform sells them; an organization reads them and moves with changePlan.
    "Query.platformTiers": Rule(OWNER, READ),
    "Query.platformTier": Rule(OWNER, READ),
    "Mutation.upsertPlatformTier": Rule(OP, MANAGE),
    "Mutation.archivePlatformTier": Rule(OP, MANAGE),
}

# Introspection needs no principal; everything else does.
_PUBLIC = {"__typename", "__schema", "__type"}


def _forbidden(message: str, code: str = "FORBIDDEN") -> ExecutionResult:
    return ExecutionResult(data=None, errors=[GraphQLError(message, extensions={"code": code})])


def guard_root_fields(ec: Any) -> None:
    """Checks each root field of the operation against the catalog before anything runs (called by
    the request's Gateway extension, app/graphql/guard.py, as execution starts)."""
    doc = ec.graphql_document
    ctx = ec.context
    if doc is not None:
        denied = _denied(doc, ec.operation_name, ctx)
        if denied:
            code = "UNAUTHENTICATED" if getattr(ctx, "principal", None) is None else "FORBIDDEN"
            if ec.operation_type is OperationType.SUBSCRIPTION:
                # A subscription starts whatever the result says: refuse it by raising.
                raise GraphQLError(denied, extensions={"code": code})
            ec.result = _forbidden(denied, code)


def _denied(doc: Any, operation_name: str | None, ctx: Any) -> str | None:
    ops = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name:
        ops = [o for o in ops if o.name and o.name.value == operation_name]
    if len(ops) != 1:
        return None  # graphql-core reports the ambiguity itself
    op = ops[0]
    type_name = op.operation.value.capitalize()
    principal = getattr(ctx, "principal", None)
    for sel in op.selection_set.selections:
        if not isinstance(sel, FieldNode):
            # Fragments on the root type: refuse rather than walk them.
            return "fragments are not allowed on the root type"
        name = sel.name.value
        if name in _PUBLIC:
            continue
        if principal is None:
            return "authentication required: send Authorization: Bearer <key>"
        rule = CATALOG.get(f"{type_name}.{name}")
        if rule is None or principal.role not in rule.roles:
            return f"not allowed: {type_name}.{name} for a {principal.role} key"
        try:
            require_scope(principal, rule.scope)
        except ScopeDenied as exc:
            return f"not allowed: {type_name}.{name}: {exc}"
    return None
