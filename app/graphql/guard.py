"""The request's guards (the Gateway extension): the token limit and a parse cache, a CPU budget
for parse + validate, the cost rule (app/graphql/cost.py) before any of graphql-core's
validation rules, validation itself, cached, the root-field permissions (permissions.py) and
error masking.

Validation takes the place of Strawberry's ValidationCache (same LRU idea, same size) because
the cost verdict has to come first and validation has to run with graphql-core's
`hide_suggestions` in production, which ValidationCache cannot pass. Both are cached per
document: the parse cache hands the same DocumentNode back for the same query text, so a
repeated query (the charge hot path) costs one dictionary lookup for its verdict and one LRU
hit for its validation.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from graphql import (
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    Node,
    OperationDefinitionNode,
    StringValueNode,
    parse,
    validate,
)
from graphql import ExecutionResult as GraphQLExecutionResult
from strawberry.extensions import SchemaExtension
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule
from strawberry.types import ExecutionResult as StrawberryExecutionResult
from strawberry.types.graphql import OperationType

from app.core.text import NUL, NUL_MESSAGE, find_nul
from app.graphql.cost import (
    BudgetExceeded,
    CostExceeded,
    CostLimits,
    check_variables,
    cpu_deadline,
    measure,
    prescan,
)
from app.graphql.hot import HotDocument, HotDocuments
from app.graphql.parse_cache import ParseCache
from app.graphql.permissions import guard_root_fields
from app.observability.context import CURRENT as CURRENT_REQUEST
from app.observability.context import note_operation

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
    schema, since the verdict depends on that schema's limits. It holds its documents weakly: the
    parse cache alone decides which stay in memory (bounded in bytes, parse_cache.py)."""

    def __init__(self, maxsize: int = 512) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[int, tuple[weakref.ref[DocumentNode], Refusal]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, doc: DocumentNode) -> Refusal | None:
        with self._lock:
            entry = self._items.get(id(doc))
            if entry is None or entry[0]() is not doc:
                return None
            self._items.move_to_end(id(doc))
            self.hits += 1
            return entry[1]

    def put(self, doc: DocumentNode, verdict: Refusal) -> None:
        with self._lock:
            # A dead document's id may be reused: get() checks the reference, not only the id.
            self._items[id(doc)] = (weakref.ref(doc), verdict)
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


class _Lru:
    """A bounded LRU of the last documents seen, with hit and miss counts (for tests)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)


# (schema, document, rules, hide) by identity -> validation errors. graphql-core's nodes hash by
# content (a walk of the whole document per lookup); identity is enough, as the parse cache hands
# the same node back. Each entry holds its schema, and its document weakly (the parse cache keeps
# documents, bounded in bytes), checked on lookup since a dead document's id may be reused.
_VALIDATED = _Lru(512)


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
    errors = validate(schema, doc, all_rules, hide_suggestions=hide)
    _VALIDATED.put((id(schema), id(doc), rules, hide), (schema, weakref.ref(doc), errors))
    return errors


def _cached_validation(
    schema: GraphQLSchema, doc: DocumentNode, rules: tuple[type[ASTValidationRule], ...], hide: bool
) -> list[GraphQLError] | None:
    hit = _VALIDATED.get((id(schema), id(doc), rules, hide))
    if hit is not None and hit[0] is schema and hit[1]() is doc:
        return hit[2]  # type: ignore[no-any-return]
    return None


def validation_cache_info() -> _Lru:
    return _VALIDATED


@dataclass(frozen=True)
class GatewayConfig:
    """A schema's request guards, built once per schema (app/graphql/schema.py)."""

    limits: CostLimits
    budget_ms: float
    hide_suggestions: bool
    verdicts: VerdictCache
    max_tokens: int
    # Added to Strawberry's rules: the depth and alias limits and, in production, no introspection.
    # Built once, so the validation cache key stays the same from request to request.
    rules: tuple[type[ASTValidationRule], ...]
    should_mask: Callable[[GraphQLError], bool]
    # Query text (and parse options) -> DocumentNode, one per schema: the same text gives the same
    # node, so the verdict and validation caches key on the node's identity. Only documents parsed
    # within the CPU budget are kept, up to METERKIT_PARSE_CACHE_BYTES in all (parse_cache.py).
    parsed: ParseCache = field(default_factory=lambda: ParseCache(16 * 1024 * 1024))
    # Accepted documents, for the hot path (app/graphql/hot.py); None: every request is generic.
    hot: HotDocuments | None = None


class Gateway(SchemaExtension):
    """Every guard of a GraphQL request in one extension, made per request: the token limit and
    the parse cache, a CPU budget from the start of parsing, the cost verdict before validation,
    validation (cached), the root-field permissions, masking of unexpected errors and, in
    production, no suggestions.

    One extension instead of seven: Strawberry wraps each hook of each extension in context
    managers on every request, which had cost a quarter of a `{ __typename }` request. The
    schema runs it through GatewayRunner (plain calls); the on_* hooks keep it usable anywhere
    else. Each phase's "after" part runs only when the phase raised nothing, as a generator
    hook's code after its `yield` does."""

    def __init__(self, config: GatewayConfig) -> None:
        super().__init__()
        self.config = config
        self._tick: Callable[[], None] | None = None
        self._parsed: tuple[Any, DocumentNode] | None = None
        self._stream_result_processed = False

    # ---- operation: limits in, errors out ----------------------------------------------------

    def begin_operation(self) -> None:
        ec = self.execution_context
        ec.parse_options["max_tokens"] = self.config.max_tokens
        ec.validation_rules = ec.validation_rules + self.config.rules
        self._stream_result_processed = False

    def end_operation(self) -> None:
        finish(self.execution_context.result, self.config, masked=self._stream_result_processed)

    def _mask(self, result: Any) -> None:
        _mask(result, self.config)

    # ---- parse ---------------------------------------------------------------------------------

    def begin_parse(self) -> None:
        ec = self.execution_context
        assert ec.query is not None  # Strawberry refuses a request without one before parsing
        key = (ec.query, *ec.parse_options.items())
        doc = self.config.parsed.get(key)
        if doc is None:
            _prescan(ec.query, self.config.limits)
            # The CPU budget runs from here. A document from the cache cost nothing to parse: its
            # budget, if it needs one, starts when validation does (no clock read on the hot path).
            self._tick = cpu_deadline(self.config.budget_ms)
            doc = parse(ec.query, **ec.parse_options)
            self._parsed = (key, doc)
        ec.graphql_document = doc

    def end_parse(self) -> None:
        if self._tick is None:
            return
        try:
            self._tick()
        except BudgetExceeded as exc:
            raise _budget_refusal(exc).error() from None
        if self._parsed is not None:
            self.config.parsed.put(*self._parsed)  # parsed within the budget: next time, a lookup

    # ---- validate: cost verdict, variables, then cached validation ------------------------------

    def begin_validate(self) -> None:
        cfg = self.config
        ec = self.execution_context
        doc = ec.graphql_document
        assert doc is not None
        verdict = cfg.verdicts.get(doc)
        if verdict is None:
            verdict = _ACCEPTED
            self._tick = self._tick or cpu_deadline(cfg.budget_ms)
            try:
                measure(doc, cfg.limits, self._tick)
            except CostExceeded as exc:
                verdict = Refusal(exc.limit, exc.maximum, exc.message)
            except BudgetExceeded as exc:
                verdict = _budget_refusal(exc)
            cfg.verdicts.put(doc, verdict)
        if verdict is _ACCEPTED and ec.variables:
            try:
                check_variables(ec.variables, cfg.limits)
            except CostExceeded as exc:
                verdict = Refusal(exc.limit, exc.maximum, exc.message)
        if verdict is not _ACCEPTED:
            ec.pre_execution_errors = [verdict.error()]
            return
        nul = _nul_in_text(ec.query, doc, ec.variables)
        if nul is not None:
            ec.pre_execution_errors = [nul]
            return
        schema, rules = ec.schema._schema, tuple(ec.validation_rules)
        errors = _cached_validation(schema, doc, rules, cfg.hide_suggestions)
        if errors is None:
            token = _TICK.set(self._tick or cpu_deadline(cfg.budget_ms))
            try:
                errors = _validate(schema, doc, rules, cfg.hide_suggestions)
            except BudgetExceeded as exc:
                refusal = _budget_refusal(exc)
                cfg.verdicts.put(doc, refusal)
                errors = [refusal.error()]
            finally:
                _TICK.reset(token)
        ec.pre_execution_errors = errors

    # ---- execute: who may call which root field ------------------------------------------------

    def begin_execute(self) -> None:
        ec = self.execution_context
        label = operation_label(ec.graphql_document, ec.operation_name)
        if CURRENT_REQUEST.get() is not None:
            note_operation(label, ec.operation_name)
        guard_root_fields(ec)
        hot = self.config.hot
        # Accepted (cost, validation) and not refused for this caller: the next request with this
        # text skips what depends on the document alone (hot.py). A \u escape in the text could hide a
        # NUL in a literal (_nul_in_text walks such documents): those stay here.
        doc = ec.graphql_document
        if hot is not None and doc is not None and ec.result is None and ec.query is not None and "\\u" not in ec.query:
            operation = ec.operation_type
            if operation is not OperationType.SUBSCRIPTION:
                entry = HotDocument(weakref.ref(doc), operation, label)
                hot.put(ec.query, ec.operation_name, entry)
                # Strawberry names the operation of a one-operation document sent without a name:
                # requests that leave it out (most clients) find it under None too.
                if ec.operation_name is not None and _operations(doc) == 1:
                    hot.put(ec.query, None, entry)

    # ---- Strawberry's hooks ----------------------------------------------------------------------

    def on_operation(self) -> Iterator[None]:
        self.begin_operation()
        yield
        self.end_operation()

    def on_parse(self) -> Iterator[None]:
        self.begin_parse()
        yield
        self.end_parse()

    def on_validate(self) -> Iterator[None]:
        self.begin_validate()
        yield

    def on_execute(self) -> Iterator[None]:
        self.begin_execute()
        yield

    def on_stream_result(self, result: Any) -> Iterator[None]:
        """Subscriptions: each result is masked before it reaches the client."""
        self._stream_result_processed = True
        self._mask(result)
        for part in chain(getattr(result, "incremental", None) or (), getattr(result, "completed", None) or ()):
            self._mask(part)
        yield None


def finish(result: Any, config: GatewayConfig, *, masked: bool = False) -> None:
    """An operation's errors as the client sees them: unexpected ones masked (unless `masked`:
    streamed results were masked one by one, on_stream_result), no suggestions in production,
    each naming the request. The generic path (end_operation) and hot documents (hot.py) alike."""
    if not masked:
        if isinstance(result, GraphQLExecutionResult | StrawberryExecutionResult):
            _mask(result, config)
        elif (initial := getattr(result, "initial_result", None)) is not None:
            _mask(initial, config)
    # Production: graphql-core's hide_suggestions covers validation and coercion; this net
    # takes any "Did you mean ...?" that another path adds (e.g. "Did you mean 'plans { ... }'?").
    if config.hide_suggestions and result is not None and result.errors:
        result.errors = [_without_suggestion(e) for e in result.errors]
    if result is not None and (errors := getattr(result, "errors", None)):
        result.errors = quote_request(errors)


def _mask(result: Any, config: GatewayConfig) -> None:
    errors = getattr(result, "errors", None)
    if errors:
        should_mask = config.should_mask
        result.errors = [_anonymised(e) if should_mask(e) else e for e in errors]


class _Phase:
    """One phase of a request for the Gateway: its begin and end as plain calls, in place of the
    context managers Strawberry builds for every hook of every extension."""

    __slots__ = ("begin", "end")

    def __init__(self, begin: Callable[[], None], end: Callable[[], None] | None) -> None:
        self.begin, self.end = begin, end

    def __enter__(self) -> None:
        self.begin()

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None and self.end is not None:
            self.end()

    async def __aenter__(self) -> None:
        self.begin()

    async def __aexit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None and self.end is not None:
            self.end()


class GatewayRunner(SchemaExtensionsRunner):
    """Strawberry's extension runner for a schema whose only extension is the Gateway."""

    def __init__(self, execution_context: Any, gateway: Gateway) -> None:
        super().__init__(execution_context, [gateway])
        self.gateway = gateway

    def operation(self) -> Any:
        return _Phase(self.gateway.begin_operation, self.gateway.end_operation)

    def parsing(self) -> Any:
        return _Phase(self.gateway.begin_parse, self.gateway.end_parse)

    def validation(self) -> Any:
        return _Phase(self.gateway.begin_validate, None)

    def executing(self) -> Any:
        return _Phase(self.gateway.begin_execute, None)

    async def get_extensions_results(self, ctx: Any) -> dict[str, Any]:
        return dict(ctx.extensions_results)


def operation_label(doc: DocumentNode | None, name: str | None) -> str | None:
    """ "mutation charge": the operation's type and first root field, names the schema bounds (a
    metric label and the access log's `operation`; the client's operation name is only logged)."""
    if doc is None:
        return None
    for d in doc.definitions:
        if isinstance(d, OperationDefinitionNode) and (name is None or (d.name is not None and d.name.value == name)):
            first = next((f for f in d.selection_set.selections if isinstance(f, FieldNode)), None)
            field_name = first.name.value if first is not None else "-"
            return f"{d.operation.value} {field_name}"
    return None


def quote_request(errors: list[GraphQLError]) -> list[GraphQLError]:
    """Every error names the request (extensions.requestId, as the X-Request-Id header), so a
    customer can quote it and the operator find its log line. Copies: validation errors are
    cached and shared by every request that sends the same document."""
    info = CURRENT_REQUEST.get()
    if info is None:
        return errors
    rid = info.request_id
    return [e if (e.extensions or {}).get("requestId") == rid else _quoted(e, rid) for e in errors]


def _quoted(error: GraphQLError, request_id: str) -> GraphQLError:
    return GraphQLError(
        message=error.message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=error.original_error,
        extensions={**(error.extensions or {}), "requestId": request_id},
    )


def _anonymised(error: GraphQLError) -> GraphQLError:
    # As Strawberry's MaskErrors: the place and path stay, the message and the cause go.
    return GraphQLError(
        message="Unexpected error.",
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
    )


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


def _prescan(query: str, limits: CostLimits) -> None:
    """Operations and aliases counted on the text of a document the parse cache does not know,
    before it is parsed (app/graphql/cost.py prescan): refused with QUERY_TOO_COMPLEX."""
    try:
        prescan(query, limits)
    except CostExceeded as exc:
        raise Refusal(exc.limit, exc.maximum, exc.message).error() from None


def _nul_in_text(query: str | None, doc: DocumentNode, variables: dict[str, Any] | None) -> GraphQLError | None:
    """A NUL in any text input (app/core/text.py), refused before validation and execution: in
    the variables (one walk of their values) or in a string literal of the document, which can
    only hold one through a `\\u` escape (the lexer refuses a raw NUL), so documents without
    one (the hot path's) are not walked."""
    where = find_nul(variables) if variables else None
    if where is not None:
        return GraphQLError(
            f"variable ${where}: {NUL_MESSAGE}", extensions={"code": "VALIDATION_FAILED", "field": where}
        )
    if query is not None and "\\u" in query:
        stack: list[Any] = [doc]
        while stack:
            node = stack.pop()
            if isinstance(node, StringValueNode):
                if NUL in node.value:
                    return GraphQLError(NUL_MESSAGE, nodes=[node], extensions={"code": "VALIDATION_FAILED"})
                continue
            for key in node.keys:
                child = getattr(node, key, None)
                if isinstance(child, Node):
                    stack.append(child)
                elif isinstance(child, tuple | list):
                    stack.extend(c for c in child if isinstance(c, Node))
    return None


def _budget_refusal(exc: BudgetExceeded) -> Refusal:
    return Refusal("graphql_cpu_budget_ms", exc.budget_ms, str(exc))


def _operations(doc: DocumentNode) -> int:
    return sum(isinstance(d, OperationDefinitionNode) for d in doc.definitions)
