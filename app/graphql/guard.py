"""The request guard: a CPU budget for parse + validate, the cost rule (app/graphql/cost.py)
before any of graphql-core's validation rules, and validation itself, cached.

It takes the place of Strawberry's ValidationCache (same LRU idea, same size) because the
cost verdict has to come first and validation has to run with graphql-core's
`hide_suggestions` in production, which ValidationCache cannot pass. Both are cached per
document: the ParserCache hands the same DocumentNode back for the same query text, so a
repeated query (the charge hot path) costs one dictionary lookup for its verdict and one LRU
hit for its validation.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from graphql import ASTValidationRule, DocumentNode, GraphQLError, GraphQLSchema, validate
from strawberry.extensions import SchemaExtension
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from app.graphql.cost import BudgetExceeded, CostExceeded, CostLimits, check_variables, cpu_deadline, measure

TOO_COMPLEX = "QUERY_TOO_COMPLEX"

# The running request's budget check, read by _BudgetRule while graphql-core validates.
_TICK: ContextVar[Callable[[], None] | None] = ContextVar("meterkit_budget_tick", default=None)


@dataclass(frozen=True)
class Refusal:
    limit: str
    maximum: float
    message: str

    def error(self) -> GraphQLError:
        return GraphQLError(
            f"query refused: {self.message}",
            extensions={"code": TOO_COMPLEX, "limit": self.limit, "max": self.maximum},
        )


_ACCEPTED = Refusal("", 0, "")


class VerdictCache:
    """Document -> verdict, by identity (the ParserCache's documents), bounded LRU. One per
    schema, since the verdict depends on that schema's limits."""

    def __init__(self, maxsize: int = 512) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[int, tuple[DocumentNode, Refusal]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, doc: DocumentNode) -> Refusal | None:
        with self._lock:
            entry = self._items.get(id(doc))
            if entry is None or entry[0] is not doc:
                return None
            self._items.move_to_end(id(doc))
            self.hits += 1
            return entry[1]

    def put(self, doc: DocumentNode, verdict: Refusal) -> None:
        with self._lock:
            # Holding the document keeps its id from being reused while the entry lives.
            self._items[id(doc)] = (doc, verdict)
            self._items.move_to_end(id(doc))
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)


class _BudgetRule(ASTValidationRule):
    """Checks the request's CPU budget between nodes while graphql-core validates (first in the
    rule list; one class for every request, so the validation cache key does not change)."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.tick = _TICK.get()
        self.n = 0

    def enter(self, *_: Any) -> None:
        self.n += 1
        if self.tick is not None and self.n & 0x3F == 0:
            self.tick()


@lru_cache(maxsize=512)
def _validate(
    schema: GraphQLSchema, doc: DocumentNode, rules: tuple[type[ASTValidationRule], ...], hide: bool
) -> list[GraphQLError]:
    # Strawberry's own validate_document adds these two rules; keep them.
    all_rules: tuple[type[ASTValidationRule], ...] = (
        _BudgetRule,
        *rules,
        MaybeNullValidationRule,
        OneOfInputValidationRule,
    )
    return validate(schema, doc, all_rules, hide_suggestions=hide)


def validation_cache_info() -> Any:
    return _validate.cache_info()


class RequestGuard(SchemaExtension):
    """Budget from the start of parsing; cost verdict, variables check, then cached validation."""

    def __init__(self, limits: CostLimits, budget_ms: float, hide_suggestions: bool, verdicts: VerdictCache) -> None:
        super().__init__()
        self.limits = limits
        self.budget_ms = budget_ms
        self.hide_suggestions = hide_suggestions
        self.verdicts = verdicts
        self._tick: Callable[[], None] | None = None

    def on_operation(self) -> Iterator[None]:
        yield
        # Production: graphql-core's hide_suggestions covers validation and coercion; this net
        # takes any "Did you mean ...?" that another path adds (e.g. "Did you mean 'plans { ... }'?").
        result = self.execution_context.result
        if self.hide_suggestions and result is not None and result.errors:
            result.errors = [_without_suggestion(e) for e in result.errors]

    def on_parse(self) -> Iterator[None]:
        self._tick = cpu_deadline(self.budget_ms)
        yield
        try:
            self._tick()
        except BudgetExceeded as exc:
            raise _budget_refusal(exc).error() from None

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        doc = ec.graphql_document
        assert doc is not None
        tick = self._tick or cpu_deadline(self.budget_ms)
        verdict = self.verdicts.get(doc)
        if verdict is None:
            verdict = _ACCEPTED
            try:
                measure(doc, self.limits, tick)
            except CostExceeded as exc:
                verdict = Refusal(exc.limit, exc.maximum, exc.message)
            except BudgetExceeded as exc:
                verdict = _budget_refusal(exc)
            self.verdicts.put(doc, verdict)
        if verdict is _ACCEPTED and ec.variables:
            try:
                check_variables(ec.variables, self.limits)
            except CostExceeded as exc:
                verdict = Refusal(exc.limit, exc.maximum, exc.message)
        if verdict is not _ACCEPTED:
            ec.pre_execution_errors = [verdict.error()]
            yield
            return
        token = _TICK.set(tick)
        try:
            errors = _validate(ec.schema._schema, doc, tuple(ec.validation_rules), self.hide_suggestions)
        except BudgetExceeded as exc:
            refusal = _budget_refusal(exc)
            self.verdicts.put(doc, refusal)
            errors = [refusal.error()]
        finally:
            _TICK.reset(token)
        ec.pre_execution_errors = errors
        yield


_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")


def _without_suggestion(error: GraphQLError) -> GraphQLError:
    if "Did you mean" not in error.message:
        return error
    return GraphQLError(
        _SUGGESTION.sub("", error.message),
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=error.original_error,
        extensions=error.extensions,
    )


def _budget_refusal(exc: BudgetExceeded) -> Refusal:
    return Refusal("graphql_cpu_budget_ms", exc.budget_ms, str(exc))
