"""One execution and one encoding per state change, shared by a tenant's subscribers (issue 17).

A Feed (app/live/hub.py) reads a tenant's state once per change; without this each of its
subscribers still executed its GraphQL selection over that state and encoded the answer itself:
0.1-0.4 ms and a few hundred short-lived objects each. With 2,000 subscribers on one key that was
most of a fan-out, and the garbage it made set off the collections (gen1, 43-61 ms) that stalled
other tenants' charges (bench/attack.py, attack a).

A subscription resolver marks the value it yields as `shared` (one object per feed state, the
same for every subscriber). SharedEventExecutor then executes an event at most once per
(value, document, variables, key, tenant): the same query over the same state for the same
caller has one answer. Its data is a SharedData, which the websocket handler encodes once
(app/graphql/ws.py). Anything not marked is executed as graphql-core always does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import ExecutionResult
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

# On a marked payload: {sharing key: (operation, result)}. It lives as long as the payload object,
# which the feed keeps only until its next state. (An attribute, not a weak mapping: Strawberry's
# types are dataclasses, unhashable.)
_RESULTS = "_meterkit_shared_results"


@dataclass
class Stats:
    """How many event executions ran and how many were answered from a shared one (tests)."""

    executed: int = 0
    shared: int = 0


stats = Stats()


class SharedData(dict[str, Any]):
    """A shared answer's data, with its JSON once encoded."""

    __slots__ = ("encoded",)

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.encoded: str | None = None


def shared(payload: Any) -> Any:
    """Marks `payload` (a subscription's yielded value, the same object for all its subscribers)
    as one whose executions may be shared."""
    setattr(payload, _RESULTS, {})
    return payload


def _caller(context: Any) -> tuple[str | None, str | None]:
    principal, scope = getattr(context, "principal", None), getattr(context, "scope", None)
    return (
        getattr(principal, "key_id", None),
        getattr(scope, "tenant_id", None),
    )


def _variables(values: dict[str, Any]) -> tuple[Any, ...] | None:
    items = tuple(sorted(values.items()))
    try:
        hash(items)
    except TypeError:  # a list or an input object: not worth a key of its own, execute as usual
        return None
    return items


class SharedEventExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor; an event of a marked payload is executed once per sharing key."""

    def execute_operation(self, serially: bool | None = None) -> Any:
        results = getattr(self.root_value, _RESULTS, None)
        if results is None:
            return super().execute_operation(serially)
        variables = _variables(self.variable_values.coerced)
        if variables is None:
            return super().execute_operation(serially)
        key = (id(self.operation), variables, *_caller(self.context_value))
        hit = results.get(key)
        if hit is not None and hit[0] is self.operation:
            stats.shared += 1
            return hit[1]
        result = super().execute_operation(serially)
        if not isinstance(result, ExecutionResult):
            return result  # awaitable (an async resolver in the selection): not shared
        stats.executed += 1
        if result.errors is None and isinstance(result.data, dict):
            result.data = SharedData(result.data)
        # The operation is kept with the result: its id is the key and must not be reused.
        results[key] = (self.operation, result)
        return result
