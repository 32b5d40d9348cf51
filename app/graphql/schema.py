"""One schema for dashboards, operator tooling and GraphiQL, assembled from the slices."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from inspect import isawaitable
from typing import Any

import strawberry
from graphql import DocumentNode, GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.execution import optimized_is_awaitable
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from app.core.errors import DomainError, Unavailable
from app.core.text import find_nul
from app.graphql.alerts import AlertsMutation, AlertsQuery
from app.graphql.audit import AuditQuery
from app.graphql.budgets import BudgetMutation, BudgetQuery
from app.graphql.catalog import CatalogMutation, CatalogQuery
from app.graphql.completion import install as install_completion
from app.graphql.cost import CostExceeded, CostLimits, check_variables
from app.graphql.credits import CreditsMutation, CreditsQuery
from app.graphql.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from app.graphql.guard import Gateway, GatewayConfig, GatewayRunner, VerdictCache, finish
from app.graphql.hot import HotDocument, HotDocuments, HotExecutor
from app.graphql.inputs import install as install_input_plans
from app.graphql.kits import AccountKitMutation, AccountKitQuery
from app.graphql.live import LiveSubscription
from app.graphql.metering import MeteringMutation, MeteringQuery
from app.graphql.organizations import OrganizationMutation, OrganizationQuery
from app.graphql.overage import OverageQuery
from app.graphql.parse_cache import ParseCache
from app.graphql.periods import PeriodsQuery
from app.graphql.permissions import guard_root_fields
from app.graphql.plans import PlanMutation, PlanQuery
from app.graphql.pricing import PricingMutation, PricingQuery
from app.graphql.scalars import CREDITS, USD, Credits, Usd, guard_credits_inputs
from app.graphql.scalars import DateTime as DateTimeScalar
from app.graphql.stripe import StripeMutation, StripeQuery
from app.graphql.subscriptions import SubscriptionMutation
from app.graphql.tenants import TenantMutation, TenantQuery
from app.graphql.usage import UsageQuery
from app.observability.context import CURRENT as CURRENT_REQUEST
from app.observability.context import note_operation
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
        allowed.discard(OperationType.SUBSCRIPTION)
        if query is not None and self.hot is not None:
            hit = self.hot.get(query, operation_name)
            if hit is not None and hit[1].operation_type in allowed:
                result = await self._execute_hot(
                    hit[0], hit[1], variable_values, context_value, root_value, operation_name, operation_extensions
                )
                if result is not None:
                    return result
        return await super().execute(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            allowed,
            operation_extensions,
        )

    # Hot documents (app/graphql/hot.py): set by build_schema, with the Gateway's config.
    hot: HotDocuments | None = None
    gateway: GatewayConfig | None = None

    async def _execute_hot(
        self,
        doc: DocumentNode,
        entry: HotDocument,
        variable_values: dict[str, Any] | None,
        context_value: Any,
        root_value: Any,
        operation_name: str | None,
        operation_extensions: dict[str, Any] | None,
    ) -> ExecutionResult | None:
        """A document the generic path accepted, executed without re-deciding what depends on it
        alone. None: this request is refused by a check that depends on it (the variables' limits,
        a NUL, the caller's permissions); the generic path answers it, nothing has run."""
        cfg = self.gateway
        assert cfg is not None
        if variable_values:
            try:
                check_variables(variable_values, cfg.limits)
            except CostExceeded:
                return None
            if find_nul(variable_values) is not None:
                return None
        probe = _RootFieldsProbe(self, doc, context_value, operation_name, entry.operation_type)
        guard_root_fields(probe)
        if probe.result is not None:
            return None
        if CURRENT_REQUEST.get() is not None:
            note_operation(entry.label, operation_name)
        try:
            result = self._get_execute_function()(
                self._schema,
                doc,
                root_value=root_value,
                variable_values=variable_values,
                operation_name=operation_name,
                context_value=context_value,
                is_awaitable=optimized_is_awaitable,
                executor_class=self.execution_context_class,
                **self._get_custom_context_kwargs(operation_extensions),
            )
            if isawaitable(result):
                result = await result
        except Exception as exc:  # noqa: BLE001  (as Strawberry's execute: an error answer, unmasked)
            errors = [exc if isinstance(exc, GraphQLError) else GraphQLError(str(exc), original_error=exc)]
            self._process_errors(errors)
            return ExecutionResult(data=None, errors=errors, extensions={})
        if result.errors:
            self._process_errors(result.errors)  # before masking, as Strawberry's _execute_operation
        finish(result, cfg)
        return ExecutionResult(data=result.data, errors=result.errors, extensions={})

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


class _RootFieldsProbe:
    """What guard_root_fields reads of Strawberry's execution context, for the hot path."""

    __slots__ = ("schema", "graphql_document", "context", "operation_name", "operation_type", "result")

    def __init__(self, schema: Any, doc: DocumentNode, context: Any, name: str | None, op: OperationType) -> None:
        self.schema, self.graphql_document, self.context = schema, doc, context
        self.operation_name, self.operation_type = name, op
        self.result: Any = None


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
        hot=HotDocuments(),
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
        # Strawberry's executor, but a tenant's subscribers share one execution per state (app/graphql/sharing.py)
        # and a hot root field's result is completed from a plan (app/graphql/hot.py).
        execution_context_class=HotExecutor,
        # Credits: integer micro-credits inside, a decimal string on the wire (app/graphql/scalars.py).
        config=StrawberryConfig(scalar_map={Credits: CREDITS, Usd: USD}),
        # DateTime refuses times whose billing periods cannot be computed (app/graphql/scalars.py).
        scalar_overrides={datetime: DateTimeScalar},
    )
    schema.hide_suggestions = hide
    # The hot path skips Strawberry's extension runner: only while the Gateway is the one extension.
    if len(schema.get_extensions()) == 1 and not schema.directives:
        schema.hot, schema.gateway = config.hot, config
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
