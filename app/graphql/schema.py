"""One schema for dashboards, operator tooling and GraphiQL, assembled from the slices."""

from __future__ import annotations

import logging
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.tools import merge_types

from app.account_kits.graphql import AccountKitMutation, AccountKitQuery
from app.core.errors import DomainError
from app.credits.graphql import CreditsMutation, CreditsQuery
from app.graphql.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from app.graphql.permissions import PermissionGuard
from app.graphql.scalars import guard_credits_inputs
from app.integrations.stripe.graphql import StripeMutation, StripeQuery
from app.metering.graphql import MeteringMutation, MeteringQuery
from app.metering.periods_graphql import PeriodsQuery
from app.metering.usage_graphql import UsageQuery
from app.overage.graphql import OverageQuery
from app.plans.graphql import PlanMutation, PlanQuery
from app.pricing.graphql import PricingMutation, PricingQuery
from app.settings import Settings
from app.subscriptions.graphql import SubscriptionMutation
from app.tenants.graphql import TenantMutation, TenantQuery

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
)

Query = merge_types("Query", QUERIES)
Mutation = merge_types("Mutation", MUTATIONS)
# Refused Credits inputs become ValidationError answers before any resolver runs (scalars.py).
guard_credits_inputs(Query.__strawberry_definition__.fields + Mutation.__strawberry_definition__.fields)  # type: ignore[attr-defined]


def should_mask(error: GraphQLError) -> bool:
    """Typed domain errors and request errors (syntax, validation, permission) stay readable;
    anything unexpected becomes "Unexpected error." and is logged."""
    original = error.original_error
    if original is None or isinstance(original, DomainError | GraphQLError):
        return False
    log.error("unexpected error in %s", error.path, exc_info=original)
    return True


class MeterkitSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        # Client mistakes (syntax, validation, permission, typed domain errors) are answers, not
        # server errors: log at ERROR only what should_mask would mask (it logs those already
        # when masking; this catches any path that skips masking).
        unexpected = [e for e in errors if e.original_error is not None and _is_unexpected(e)]
        super().process_errors(unexpected, execution_context)


def _is_unexpected(error: GraphQLError) -> bool:
    return not isinstance(error.original_error, DomainError | GraphQLError)


def build_schema(settings: Settings) -> strawberry.Schema:
    # The depth and alias limiters build a new validation rule class each time they are constructed,
    # which made every request miss the ValidationCache (~4 ms of re-validation per request). Build
    # their rules once per schema; a fresh AddValidationRules per request carries the same classes.
    limit_rules = (
        QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules
        + MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules
    )
    extensions: list[Any] = [
        lambda: ParserCache(maxsize=512),
        # Factories, not instances: an extension instance shared by concurrent requests shares its state.
        lambda: AddValidationRules(limit_rules),
        lambda: ValidationCache(maxsize=512),
        lambda: MaxTokensLimiter(max_token_count=settings.max_tokens),
        PermissionGuard,
        lambda: MaskErrors(should_mask_error=should_mask),
    ]
    if not settings.graphiql_enabled:
        extensions.append(DisableIntrospection)
    return MeterkitSchema(
        query=Query,
        mutation=Mutation,
        extensions=extensions,
        types=[NotFoundError, ValidationError, ForbiddenError, ConflictError],
    )


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
