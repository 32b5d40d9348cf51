"""Deny by default: every root field says who may call it, here and only here.
A field missing from this catalog is refused at run time and fails a test."""

from __future__ import annotations

from typing import Any

from graphql import FieldNode, OperationDefinitionNode
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionResult

from app.core.auth import Role

OP: frozenset[Role] = frozenset({"operator"})
TENANT: frozenset[Role] = frozenset({"tenant"})
BOTH: frozenset[Role] = frozenset({"operator", "tenant"})

CATALOG: dict[str, frozenset[Role]] = {
    # Control plane: reads
    "Query.accountKits": OP,
    "Query.accountKit": OP,
    "Query.plans": BOTH,
    "Query.plan": BOTH,
    "Query.tenants": OP,
    "Query.tenant": BOTH,
    "Query.viewer": BOTH,
    # Control plane: writes
    "Mutation.upsertAccountKit": OP,
    "Mutation.upsertPlan": OP,
    "Mutation.archivePlan": OP,
    "Mutation.createTenant": OP,
    "Mutation.createApiKey": BOTH,
    "Mutation.createOperatorKey": OP,
    "Mutation.revokeApiKey": BOTH,
    "Mutation.setSubscription": OP,
    # Metering: the tenant in scope (a tenant key, or an operator with X-Tenant-Id)
    "Query.check": BOTH,
    "Query.usageHistory": BOTH,
    "Mutation.charge": BOTH,
    "Mutation.chargeBatch": BOTH,
    "Mutation.reserve": BOTH,
    "Mutation.settle": BOTH,
    "Mutation.release": BOTH,
    # Credits and pricing: balances and history of the tenant in scope; the catalog is public to keys
    "Query.status": BOTH,
    "Query.creditHistory": BOTH,
    "Query.creditPacks": BOTH,
    "Query.prices": BOTH,
    "Query.llmRates": BOTH,
    "Query.mediaPrices": BOTH,
    "Query.pricingSettings": BOTH,
    "Query.imagePricing": BOTH,
    "Query.videoPricing": BOTH,
    "Query.priceQuote": BOTH,
    "Query.reconcile": OP,
    "Mutation.grantCredits": OP,
    "Mutation.reverseCreditEntry": OP,
    "Mutation.upsertCreditPack": OP,
    "Mutation.setPrice": OP,
    "Mutation.setLlmRate": OP,
    "Mutation.setMediaPrice": OP,
    "Mutation.setPricingSetting": OP,
    # The primitive catalog (issue 11): readable by every key, edited by operators
    "Query.primitives": BOTH,
    "Mutation.upsertPrimitive": OP,
    # Per-key budgets (issue 11): a tenant budgets its own keys, an operator any tenant key
    "Query.keyBudget": BOTH,
    "Mutation.setKeyBudget": BOTH,
    "Mutation.clearKeyBudget": BOTH,
    # The audit log of control-plane writes (issue 11): operators only
    "Query.auditLog": OP,
    # Alerts as signed webhooks (issue 11): endpoints for operators and tenants; the log and replay for operators
    "Query.webhookEndpoints": BOTH,
    "Query.webhookDeliveries": OP,
    "Mutation.createWebhookEndpoint": BOTH,
    "Mutation.setWebhookEndpointActive": BOTH,
    "Mutation.replayWebhookDelivery": OP,
    "Mutation.setAlertPolicy": OP,
    # Stripe: money in for the tenant in scope (a tenant key, or an operator with X-Tenant-Id)
    "Mutation.purchaseCreditPack": BOTH,
    "Mutation.changePlan": BOTH,
}

# Introspection needs no principal; everything else does.
_PUBLIC = {"__typename", "__schema", "__type"}


def _forbidden(message: str, code: str = "FORBIDDEN") -> ExecutionResult:
    from graphql import GraphQLError

    return ExecutionResult(data=None, errors=[GraphQLError(message, extensions={"code": code})])


class PermissionGuard(SchemaExtension):
    """Checks each root field of the operation against the catalog before anything runs."""

    def on_execute(self) -> Any:
        ec = self.execution_context
        doc = ec.graphql_document
        ctx = ec.context
        if doc is not None:
            denied = self._denied(doc, ec.operation_name, ctx)
            if denied:
                code = "UNAUTHENTICATED" if getattr(ctx, "principal", None) is None else "FORBIDDEN"
                ec.result = _forbidden(denied, code)  # type: ignore[assignment]
        yield

    def _denied(self, doc: Any, operation_name: str | None, ctx: Any) -> str | None:
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
            allowed = CATALOG.get(f"{type_name}.{name}")
            if allowed is None or principal.role not in allowed:
                return f"not allowed: {type_name}.{name} for a {principal.role} key"
        return None
