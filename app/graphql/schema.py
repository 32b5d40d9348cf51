"""One schema for dashboards, operator tooling and GraphiQL, assembled from the slices."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import strawberry
from graphql import GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from app.core.errors import DomainError, Unavailable
from app.graphql.alerts import AlertsMutation, AlertsQuery
from app.graphql.audit import AuditQuery
from app.graphql.budgets import BudgetMutation, BudgetQuery
from app.graphql.catalog import CatalogMutation, CatalogQuery
from app.graphql.completion import install as install_completion
from app.graphql.cost import CostLimits
from app.graphql.credits import CreditsMutation, CreditsQuery
from app.graphql.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from app.graphql.guard import Gateway, GatewayConfig, GatewayRunner, VerdictCache
from app.graphql.inputs import install as install_input_plans
from app.graphql.kits import AccountKitMutation, AccountKitQuery
from app.graphql.live import LiveSubscription
from app.graphql.metering import MeteringMutation, MeteringQuery
from app.graphql.organizations import OrganizationMutation, OrganizationQuery
from app.graphql.overage import OverageQuery
from app.graphql.parse_cache import ParseCache
from app.graphql.periods import PeriodsQuery
from app.graphql.plans import PlanMutation, PlanQuery
from app.graphql.pricing import PricingMutation, PricingQuery
from app.graphql.scalars import CREDITS, USD, Credits, Usd, guard_credits_inputs
from app.graphql.scalars import DateTime as DateTimeScalar
from app.graphql.sharing import SharedEventExecutor
from app.graphql.stripe import StripeMutation, StripeQuery
from app.graphql.subscriptions import SubscriptionMutation
from app.graphql.tenants import TenantMutation, TenantQuery
from app.graphql.usage import UsageQuery
from app.settings import Settings

log = logging.getLogger("meterkit.graphql")

QUERIES: tuple[type, ...] = (
    TenantQuery,
    PlanQuery,
    AccountKitQuery,
    MeteringQuery,
    UsageQuery,
    PeriodsQuery,
    OverageQuery,
    CreditsQuery,
    PricingQuery,
    StripeQuery,
    CatalogQuery,
    BudgetQuery,
    AuditQuery,
    AlertsQuery,
    OrganizationQuery,
)
MUTATIONS: tuple[type, ...] = (
    TenantMutation,
    PlanMutation,
    AccountKitMutation,
    SubscriptionMutation,
    MeteringMutation,
    CreditsMutation,
    PricingMutation,
    StripeMutation,
    CatalogMutation,
    BudgetMutation,
    AlertsMutation,
    OrganizationMutation,
)

Query = merge_types("Query", QUERIES)
Mutation = merge_types("Mutation", MUTATIONS)
# Refused Credits inputs become ValidationError answers before any resolver runs (scalars.py).
guard_credits_inputs(Query.__strawberry_definition__.fields + Mutation.__strawberry_definition__.fields)  # type: ignore[attr-defined]


def should_mask(error: GraphQLError) -> bool:
    """Typed domain errors and request errors (syntax, validation, permission) stay readable;
    anything unexpected becomes "Unexpected error." and is logged."""
    if not _is_unexpected(error):
        return False
    log.error("unexpected error in %s", error.path, exc_info=error.original_error)
    return True


class MeterkitSchema(strawberry.Schema):
    async def execute(  # type: ignore[override]
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        # One answer per request (HTTP): a subscription would resolve once as a plain field and
        # fail. Subscriptions are served over graphql-transport-ws (Schema.stream), never here.
        allowed = set(allowed_operation_types or (OperationType.QUERY, OperationType.MUTATION))
        return await super().execute(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            allowed - {OperationType.SUBSCRIPTION},
            operation_extensions,
        )

    # Production: graphql-core leaves "Did you mean ...?" out of validation and coercion errors.
    hide_suggestions = False

    def _get_custom_context_kwargs(self, operation_extensions: Any = None, *, sync: bool = False) -> dict[str, Any]:
        # Strawberry passes these on to graphql-core's execute/subscribe: the one place to ask
        # for suggestion-free variable coercion errors.
        kwargs = super()._get_custom_context_kwargs(operation_extensions, sync=sync)
        if self.hide_suggestions:
            kwargs["hide_suggestions"] = True
        return kwargs

    def create_extensions_runner(self, execution_context: Any, extensions: list[Any]) -> Any:
        # The Gateway alone: its phases as plain calls (GatewayRunner), not context managers.
        if len(extensions) == 1 and isinstance(extensions[0], Gateway):
            return GatewayRunner(execution_context, extensions[0])
        return super().create_extensions_runner(execution_context, extensions)

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        # Client mistakes (syntax, validation, permission, typed domain errors) are answers, not
        # server errors: log at ERROR only what should_mask would mask (it logs those already
        # when masking; this catches any path that skips masking).
        unexpected = [e for e in errors if e.original_error is not None and _is_unexpected(e)]
        super().process_errors(unexpected, execution_context)


def _is_unexpected(error: GraphQLError) -> bool:
    original = error.original_error
    if original is None or isinstance(original, DomainError | GraphQLError | Unavailable):
        return False  # Unavailable: a typed, retryable answer (its extensions), never "Unexpected error."
    # A scalar refusing a value (Credits "x", a bad DateTime) raises ValueError/TypeError while
    # graphql-core checks a literal or a variable: a client mistake tied to a document node,
    # before anything runs (no path). Found by the abuse suite: it was "Unexpected error.".
    return not (isinstance(original, ValueError | TypeError) and error.path is None and error.nodes)


def build_schema(settings: Settings) -> strawberry.Schema:
    # The depth and alias limiters build a new validation rule class each time they are constructed,
    # which made every request miss the ValidationCache (~4 ms of re-validation per request). Build
    # their rules once per schema; every request's Gateway carries the same classes.
    limit_rules = (
        QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules
        + MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules
    )
    limits = CostLimits(
        max_fields=settings.max_fields,
        max_fragment_spreads=settings.max_fragment_spreads,
        max_duplicate_fields=settings.max_duplicate_fields,
        max_nesting=settings.max_nesting,
        max_directives=settings.max_directives,
        max_variables=settings.max_variables,
        max_list_items=settings.max_list_items,
        max_operations=settings.max_operations,
        max_aliases=settings.max_aliases,
        max_tokens=settings.max_tokens,
    )
    hide = settings.env == "production"
    if not settings.graphiql_enabled:
        limit_rules = limit_rules + [NoSchemaIntrospectionCustomRule]
    config = GatewayConfig(
        limits=limits,
        budget_ms=settings.graphql_cpu_budget_ms,
        hide_suggestions=hide,
        verdicts=VerdictCache(maxsize=512),
        parsed=ParseCache(settings.parse_cache_bytes),
        max_tokens=settings.max_tokens,
        rules=tuple(limit_rules),
        should_mask=should_mask,
    )
    # A factory, not an instance: an extension instance shared by concurrent requests shares its
    # state. One extension for every guard (app/graphql/guard.py, Gateway).
    extensions: list[Any] = [lambda: Gateway(config)]
    schema = MeterkitSchema(
        query=Query,
        mutation=Mutation,
        subscription=LiveSubscription,
        extensions=extensions,
        types=[NotFoundError, ValidationError, ForbiddenError, ConflictError],
        # Strawberry's executor, but a tenant's subscribers share one execution per state (app/graphql/sharing.py).
        execution_context_class=SharedEventExecutor,
        # Credits: integer micro-credits inside, a decimal string on the wire (app/graphql/scalars.py).
        config=StrawberryConfig(scalar_map={Credits: CREDITS, Usd: USD}),
        # DateTime refuses times whose billing periods cannot be computed (app/graphql/scalars.py).
        scalar_overrides={datetime: DateTimeScalar},
    )
    schema.hide_suggestions = hide
    # Input objects from a plan made once per type (app/graphql/inputs.py).
    install_input_plans(t.definition for t in schema.schema_converter.type_map.values())
    # Union type resolution by class and one-call attribute fields (app/graphql/completion.py).
    install_completion(schema)
    return schema


def export_sdl() -> str:
    """The SDL with an explicit `schema {}` root block: SDL tools (codegen, graphql-core's
    build_schema) then never guess the roots from type names."""
    schema = build_schema(Settings())
    sdl = schema.as_str()
    if not sdl.startswith("schema {"):
        gql = schema._schema
        roots = [("query", gql.query_type), ("mutation", gql.mutation_type), ("subscription", gql.subscription_type)]
        block = "\n".join(f"  {op}: {t.name}" for op, t in roots if t is not None)
        sdl = f"schema {{\n{block}\n}}\n\n{sdl}"
    return sdl + "\n"
