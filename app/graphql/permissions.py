"""Deny by default: every root field says who may call it (operator and/or tenant keys) and
which key scope it needs (read, meter, manage), here and only here. A field missing from this
catalog is refused at run time and fails a test; the scope check itself is app/core/auth.py's
`require_scope`, shared with the REST routes."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, NamedTuple

from graphql import (
    BREAK,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    TypeInfo,
    TypeInfoVisitor,
    Visitor,
    visit,
)
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
    "Query.caller": Rule(ALL, READ),
    # Control plane: writes
    "Mutation.upsertAccountKit": Rule(OWNER, MANAGE),
    "Mutation.upsertPlan": Rule(OWNER, MANAGE),
    "Mutation.archivePlan": Rule(OWNER, MANAGE),
    "Mutation.migratePlanSubscribers": Rule(OWNER, MANAGE),
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
    # Per-key budgets (issue 11): an end user budgets its own keys, an organization its end users' keys
    # (app/budgets/service.py budgetable_key), the platform any of them
    "Query.keyBudget": Rule(ALL, READ),
    "Mutation.setKeyBudget": Rule(ALL, MANAGE),
    "Mutation.clearKeyBudget": Rule(ALL, MANAGE),
    # The audit log of control-plane writes (issue 11): the platform reads all, an organization its own
    "Query.auditLog": Rule(OWNER, READ),
    # Alerts as signed webhooks (issue 11): endpoints for every key, each seeing its own (an organization:
    # its endpoints and its end users'); the delivery log and replay for the platform
    "Query.webhookEndpoints": Rule(ALL, READ),
    "Query.webhookDeliveries": Rule(OP, READ),
    "Mutation.createWebhookEndpoint": Rule(ALL, MANAGE),
    "Mutation.setWebhookEndpointActive": Rule(ALL, MANAGE),
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
    # Its own Stripe (issue 20): only the organization connects it; the platform reads what it connected.
    "Mutation.connectStripe": Rule(frozenset({"organization"}), MANAGE),
    # Platform tiers: the platform sells them; an organization reads them and moves with changePlan.
    "Query.platformTiers": Rule(OWNER, READ),
    "Query.platformTier": Rule(OWNER, READ),
    "Mutation.upsertPlatformTier": Rule(OP, MANAGE),
    "Mutation.archivePlatformTier": Rule(OP, MANAGE),
}

# Fields of the object types, deny by default: every type (and interface) the schema has is listed with
# the roles that may read its fields, and FIELDS narrows single fields of a type several roles reach. A
# type or field missing here is refused at run time and fails a test (tests/graphql/test_field_permissions.py).
# Root fields decide what a key may ask for; these decide what it may read in the answer.
TYPES: dict[str, frozenset[Role]] = {
    "AccountKit": ALL,
    "AccountKitPreview": ALL,
    "AlertPolicy": ALL,
    "ApiKey": ALL,
    "AuditEntry": OWNER,
    "AuditEntryConnection": OWNER,
    "AuditEntryEdge": OWNER,
    "BillingPeriod": ALL,
    "BillingPeriodConnection": ALL,
    "BillingPeriodEdge": ALL,
    "BillingSubscription": ALL,
    "Caller": ALL,
    "BudgetExceeded": ALL,
    "Charged": ALL,
    "CheckResult": ALL,
    "CheckoutSession": ALL,
    "ConfirmationRequiredError": ALL,
    "ConflictError": ALL,
    "CreatedApiKey": ALL,
    "CreatedOrganization": OP,
    "CreatedWebhookEndpoint": ALL,
    "CreditBalance": ALL,
    "CreditBucket": ALL,
    "CreditEntry": ALL,
    "CreditEntryConnection": ALL,
    "CreditEntryEdge": ALL,
    "CreditGrant": OP,
    "CreditPack": ALL,
    "CreditReversal": OP,
    "EndUserCreditCap": ALL,  # the refusal of an end user's call at its own cap: its cap and use
    "FixedPrice": ALL,
    "FieldChange": ALL,
    "ForbiddenError": ALL,
    "Hold": ALL,
    "HoldClosed": ALL,
    "IdempotencyConflict": ALL,
    "InsufficientCredits": ALL,
    "KeyBudget": ALL,
    "KeyBudgetCleared": ALL,
    "KeyQuantityLimit": ALL,
    "KeyUsageLine": ALL,
    "LimitExceeded": ALL,
    "LlmRate": ALL,
    "MediaPrice": ALL,
    "MediaPricing": ALL,
    "MeterError": ALL,
    "NotEntitled": ALL,
    "NotFoundError": ALL,
    "Organization": OWNER,
    "OrganizationConnection": OP,
    "OrganizationCreditsExhausted": ALL,
    "OrganizationEdge": OP,
    "OverageReport": OP,
    "OverageReportConnection": OP,
    "OverageReportEdge": OP,
    "PackOffer": ALL,
    "PageInfo": ALL,
    "Plan": ALL,
    "PlanChangeSubmitted": ALL,
    "PlanPreview": ALL,
    "PlanSubscribersMigrated": OWNER,
    "PlanQuota": ALL,
    "PlatformTier": OWNER,
    "PriceQuote": ALL,
    "PricingSettings": ALL,
    "Primitive": ALL,
    "PrimitiveLimit": ALL,
    "PrimitiveUsage": ALL,
    "QuotaExceeded": ALL,
    "ReconcileReport": OP,
    "SessionTimeTier": ALL,
    "SettleCut": ALL,
    "StatusResources": ALL,
    "StripeConnection": OWNER,
    "StripeEvent": OP,
    "StripeEventConnection": OP,
    "StripeEventEdge": OP,
    "SubscriptionChanged": ALL,
    "Tenant": ALL,
    "TenantActivity": OP,
    "TenantConnection": OWNER,
    "TenantDrift": OP,
    "TenantEdge": OWNER,
    "TenantStatus": ALL,
    "UsageEvent": ALL,
    "UsageEventConnection": ALL,
    "UsageEventEdge": ALL,
    "UsageLine": ALL,
    "UsagePeriod": ALL,
    "UsagePoint": ALL,
    "UsageReport": ALL,
    "UserError": ALL,
    "ValidationError": ALL,
    "WebhookAttempt": OP,
    "WebhookDelivery": OP,
    "WebhookEndpoint": ALL,
}
FIELDS: dict[str, frozenset[Role]] = {
    # A balance through Tenant is for the platform and the organization only. An end user never reads
    # its organization's balance; its own wallet (where its organization turned end-user wallets on) is
    # read through Query.status and Query.creditHistory, as today.
    "Tenant.credits": OWNER,
    "Tenant.creditHistory": OWNER,
    # An end user reaches its organization through Tenant.organization: its name, nothing of its money.
    "Organization.id": ALL,
    "Organization.name": ALL,
    "Organization.stripe": OWNER,
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
        principal = getattr(ctx, "principal", None)
        if denied is None and principal is not None:
            denied = _fields_denied(ec.schema._schema, doc, ec.operation_name, principal.role)
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


class _FieldVerdicts:
    """(document, operation, role) -> the first field that role may not read, or None. By the parse
    cache's document identity (as the cost verdicts, app/graphql/guard.py), held weakly, bounded: a
    repeated query (the charge hot path) costs one lookup, not a walk."""

    def __init__(self, maxsize: int = 1024) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[int, str | None, str], tuple[weakref.ref[DocumentNode], str | None]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, doc: DocumentNode, key: tuple[int, str | None, str]) -> tuple[bool, str | None]:
        with self._lock:
            entry = self._items.get(key)
            if entry is None or entry[0]() is not doc:
                return False, None
            self._items.move_to_end(key)
            return True, entry[1]

    def put(self, doc: DocumentNode, key: tuple[int, str | None, str], verdict: str | None) -> None:
        with self._lock:
            self._items[key] = (weakref.ref(doc), verdict)
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)


_FIELD_VERDICTS = _FieldVerdicts()


def field_roles(type_name: str, field_name: str) -> frozenset[Role]:
    """Who may read a field of an object type or interface: its own entry, else its type's; none if neither."""
    return FIELDS.get(f"{type_name}.{field_name}") or TYPES.get(type_name) or frozenset()


def _fields_denied(schema: GraphQLSchema, doc: DocumentNode, operation_name: str | None, role: Role) -> str | None:
    key = (id(doc), operation_name, role)
    known, verdict = _FIELD_VERDICTS.get(doc, key)
    if not known:
        verdict = _walk(schema, doc, operation_name, role)
        _FIELD_VERDICTS.put(doc, key, verdict)
    return verdict


def _walk(schema: GraphQLSchema, doc: DocumentNode, operation_name: str | None, role: Role) -> str | None:
    """The operation that runs and the fragments it spreads, field by field with their parent types."""
    ops = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name:
        ops = [o for o in ops if o.name and o.name.value == operation_name]
    if len(ops) != 1:
        return None  # graphql-core reports it
    fragments = {d.name.value: d for d in doc.definitions if isinstance(d, FragmentDefinitionNode)}
    roots = {t for t in (schema.query_type, schema.mutation_type, schema.subscription_type) if t is not None}
    denied: list[str] = []
    spread: list[str] = []

    class Check(Visitor):
        def __init__(self, info: TypeInfo) -> None:
            super().__init__()
            self.info = info

        def enter_field(self, node: FieldNode, *_: Any) -> Any:
            parent = self.info.get_parent_type()
            name = node.name.value
            if parent is None or parent in roots or name.startswith("__") or parent.name.startswith("__"):
                return None
            if role not in field_roles(parent.name, name):
                denied.append(f"{parent.name}.{name}")
                return BREAK
            return None

        def enter_fragment_spread(self, node: FragmentSpreadNode, *_: Any) -> None:
            spread.append(node.name.value)

    seen: set[str] = set()
    nodes: list[Any] = [ops[0]]
    while nodes and not denied:
        info = TypeInfo(schema)
        visit(nodes.pop(), TypeInfoVisitor(info, Check(info)))
        for fragment in spread:
            if fragment not in seen and fragment in fragments:
                seen.add(fragment)
                nodes.append(fragments[fragment])
        spread.clear()
    if denied:
        return f"not allowed: {denied[0]} for a {role} key"
    return None
