"""Hot documents: a document seen before runs without the work that does not depend on its variables.

The first time a query text is executed it takes the generic path (app/graphql/guard.py: parse,
cost verdict, validation, permissions, each cached per document). Once it has been accepted
there, the schema (app/graphql/schema.py, MeterkitSchema.execute) keeps it in HotDocuments:
(query text, operation name) -> its document, operation type and label. The next request with
the same text goes straight to graphql-core's executor: no Strawberry execution context, no
extension runner, no parse or validation lookups. What depends on the request still runs every
time, in the generic path's order: the variables' limits and NUL check (cost.py, text.py), the
root-field permissions for this caller (permissions.py), variable coercion (graphql-core), the
resolver, the masking and request ids of errors (guard.py finish). Any refusal among the first
three sends the request down the generic path, which answers it as always (nothing has run yet).

HotExecutor also completes a hot root field's result (a union of object types: ChargeResult,
CheckOutcome...) from a plan made once per document field: per runtime class, the response
keys in order, each an attribute read and the scalar's serializer. It covers the subset where
that is exactly what graphql-core would do: plain attribute fields (completion.py), no
arguments, no directives, no named fragments, object types Strawberry checks by class. Any value
the plan is not sure of (a class it does not know, a null where the type says non-null, a
serializer that raises) makes it give up and graphql-core complete the same value itself, so
errors keep graphql-core's words and paths. tests/graphql/test_hot_documents.py compares the
two answers byte for byte.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLAbstractType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    InlineFragmentNode,
    SelectionSetNode,
    is_leaf_type,
)
from graphql.pyutils import Undefined
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.cast import TYPE_CAST_ATTRIBUTE

from app.graphql.sharing import SharedEventExecutor

# Documents longer than this stay on the generic path: the registry holds its keys' text.
MAX_HOT_TEXT = 32 * 1024


@dataclass(frozen=True)
class HotDocument:
    doc: weakref.ref[DocumentNode]  # the parse cache decides how long a document lives
    operation_type: Any  # strawberry.types.graphql.OperationType
    label: str | None  # "mutation charge" (guard.operation_label)


class HotDocuments:
    """(query text, operation name) -> HotDocument, a bounded LRU. One per schema: an entry says
    the document passed that schema's cost limits and validation."""

    def __init__(self, maxsize: int = 256) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[str, str | None], HotDocument] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: tuple[str, str | None]) -> bool:
        """Whether (query text, operation name) is held, without counting a hit (app/main.py's lane)."""
        return key in self._items

    def get(self, query: str, operation_name: str | None) -> tuple[DocumentNode, HotDocument] | None:
        entry = self._items.get((query, operation_name))
        if entry is None:
            return None
        doc = entry.doc()
        if doc is None:  # dropped by the parse cache: parsed and checked again next time
            with self._lock:
                self._items.pop((query, operation_name), None)
            return None
        self.hits += 1
        return doc, entry

    def put(self, query: str, operation_name: str | None, entry: HotDocument) -> None:
        if len(query) > MAX_HOT_TEXT:
            return
        with self._lock:
            self._items[(query, operation_name)] = entry
            self._items.move_to_end((query, operation_name))
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)


# ---- completion plans ------------------------------------------------------------------------


class _GiveUp(Exception):
    """The plan is not sure of this value: graphql-core completes it."""


_GIVE_UP = _GiveUp()
Complete = Callable[[Any], Any]


def _object_plan(
    schema: GraphQLSchema, gql_type: GraphQLObjectType, selections: list[SelectionSetNode]
) -> Callable[[Any], dict[str, Any]] | None:
    """A function completing a value of `gql_type` under `selections`, or None when graphql-core's
    answer could differ from a plain walk (see the module docstring)."""
    origin = _origin(gql_type)
    if origin is None:
        return None
    collected: dict[str, list[FieldNode]] = {}
    if not _collect(schema, gql_type, selections, collected):
        return None
    steps: list[tuple[str, str | None, Any]] = []
    for key, nodes in collected.items():
        name = nodes[0].name.value
        if name == "__typename":
            steps.append((key, None, gql_type.name))
            continue
        field = gql_type.fields.get(name)
        attr = getattr(field.resolve, "_meterkit_attribute", None) if field is not None else None
        if field is None or attr is None or field.args or any(n.arguments for n in nodes):
            return None
        sub = [n.selection_set for n in nodes if n.selection_set is not None]
        complete = _value_plan(schema, field.type, sub)
        if complete is None:
            return None
        steps.append((key, attr, complete))
    frozen = tuple(steps)

    def complete_object(value: Any) -> dict[str, Any]:
        # graphql-core asks Strawberry's is_type_of (isinstance on the class); the class itself
        # answers it here, anything else (a subclass, a cast) is left to graphql-core.
        if type(value) is not origin or getattr(value, TYPE_CAST_ATTRIBUTE, None) is not None:
            raise _GIVE_UP
        out: dict[str, Any] = {}
        for key, attr, complete in frozen:
            out[key] = complete if attr is None else complete(getattr(value, attr))
        return out

    return complete_object


def _value_plan(schema: GraphQLSchema, type_: Any, selections: list[SelectionSetNode]) -> Complete | None:
    if isinstance(type_, GraphQLNonNull):
        inner = _value_plan(schema, type_.of_type, selections)
        if inner is None:
            return None

        def non_null(value: Any) -> Any:
            out = inner(value)
            if out is None:
                raise _GIVE_UP  # graphql-core's "Cannot return null for non-nullable field"
            return out

        return non_null
    if isinstance(type_, GraphQLList):
        item = _value_plan(schema, type_.of_type, selections)
        if item is None:
            return None

        def complete_list(value: Any) -> Any:
            if value is None or value is Undefined:
                return None
            if not isinstance(value, list | tuple):
                raise _GIVE_UP
            return [item(v) for v in value]

        return complete_list
    if is_leaf_type(type_):
        if selections:
            return None
        coerce = type_.coerce_output_value

        def leaf(value: Any) -> Any:
            if value is None or value is Undefined:
                return None
            out = coerce(value)
            if out is None or out is Undefined:
                raise _GIVE_UP
            return out

        return leaf
    if isinstance(type_, GraphQLObjectType):
        obj = _object_plan(schema, type_, selections)
        if obj is None:
            return None

        def nullable_object(value: Any) -> Any:
            return None if value is None or value is Undefined else obj(value)

        return nullable_object
    return None  # interfaces and unions below the root: graphql-core's


def _collect(
    schema: GraphQLSchema,
    runtime: GraphQLObjectType,
    selections: list[SelectionSetNode],
    into: dict[str, list[FieldNode]],
) -> bool:
    """graphql-core's field collection for `runtime`, for selections without directives or named
    fragments (False for anything else)."""
    for selection_set in selections:
        for sel in selection_set.selections:
            if sel.directives:
                return False
            if isinstance(sel, FieldNode):
                into.setdefault(sel.alias.value if sel.alias else sel.name.value, []).append(sel)
            elif isinstance(sel, InlineFragmentNode):
                if sel.type_condition is not None:
                    cond = schema.get_type(sel.type_condition.name.value)
                    if cond is None:
                        return False
                    applies = cond is runtime or (
                        isinstance(cond, GraphQLAbstractType) and schema.is_sub_type(cond, runtime)
                    )
                    if not applies:
                        continue
                if not _collect(schema, runtime, [sel.selection_set], into):
                    return False
            else:
                return False  # a named fragment: graphql-core's
    return True


def _origin(gql_type: GraphQLObjectType) -> type | None:
    definition = (gql_type.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
    if definition is None or definition.concrete_of is not None or definition.is_graphql_generic:
        return None
    is_type_of = gql_type.is_type_of
    # Strawberry's own check (isinstance on the class or its interfaces) or none at all.
    if is_type_of is not None and "_get_is_type_of" not in getattr(is_type_of, "__qualname__", ""):
        return None
    return definition.origin  # type: ignore[no-any-return]


def _root_plan(
    schema: GraphQLSchema, union: GraphQLUnionType, nodes: list[FieldNode]
) -> dict[type, Callable[[Any], dict[str, Any]]] | None:
    """Python class -> its completion, for each member of `union`; None unless every member has one."""
    if any(n.directives for n in nodes):
        return None
    selections = [n.selection_set for n in nodes if n.selection_set is not None]
    by_class: dict[type, Callable[[Any], dict[str, Any]]] = {}
    for member in union.types:
        origin = _origin(member)
        plan = _object_plan(schema, member, selections) if origin is not None else None
        if origin is None or plan is None or origin in by_class:
            return None
        by_class[origin] = plan
    return by_class


class _Plans:
    """Root field node -> its plan (None where there is none), by the node's identity, held weakly:
    the parse cache decides how long a document lives. Bounded; a field longer than MAX_HOT_TEXT
    in the text gets no plan."""

    def __init__(self, maxsize: int = 512) -> None:
        self.maxsize = maxsize
        self.items: dict[int, tuple[weakref.ref[FieldNode], dict[type, Any] | None]] = {}
        self._lock = threading.Lock()
        self.completed = 0  # answers completed by a plan (tests)

    def get(self, schema: GraphQLSchema, union: GraphQLUnionType, nodes: list[FieldNode]) -> dict[type, Any] | None:
        node = nodes[0]
        entry = self.items.get(id(node))
        if entry is not None and entry[0]() is node:
            return entry[1]
        small = node.loc is not None and node.loc.end - node.loc.start <= MAX_HOT_TEXT
        plan = _root_plan(schema, union, nodes) if len(nodes) == 1 and small else None
        with self._lock:
            if len(self.items) >= self.maxsize:
                self.items.clear()  # rare (512 hot fields): rebuilt on use
            self.items[id(node)] = (weakref.ref(node), plan)
        return plan


PLANS = _Plans()


class HotExecutor(SharedEventExecutor):
    """The schema's executor: a root field returning a union of object types is completed from
    its plan when it has one (and the plan is sure), by graphql-core otherwise."""

    def complete_value(
        self,
        return_type: Any,
        field_details_list: Any,
        info: Any,
        path: Any,
        result: Any,
        position_context: Any,
    ) -> Any:
        # A middleware would wrap each field's resolver: the plan reads attributes, so not then.
        middleware = self.middleware_manager
        if (
            path.prev is None
            and isinstance(return_type, GraphQLNonNull)
            and (middleware is None or not middleware._middleware_resolvers)
        ):
            union = return_type.of_type
            if isinstance(union, GraphQLUnionType) and not isinstance(result, Exception):
                plan = PLANS.get(self.schema, union, [d.node for d in field_details_list])
                if plan is not None:
                    complete = plan.get(type(result))
                    if complete is not None:
                        try:
                            out = complete(result)
                        except Exception:  # noqa: BLE001  (_GiveUp or a serializer's error: graphql-core's to word)
                            pass
                        else:
                            PLANS.completed += 1
                            return out
            elif type(result) is list and (items := _union_items(union)) is not None:
                # A list of the union's members (chargeBatch's [ChargeResult!]!): each item by its
                # class's plan, or the whole list by graphql-core when one item is not sure.
                plan = PLANS.get(self.schema, items, [d.node for d in field_details_list])
                if plan is not None:
                    try:
                        out = [plan[type(item)](item) for item in result]
                    except Exception:  # noqa: BLE001  (no plan for a class, _GiveUp, a serializer's error)
                        pass
                    else:
                        PLANS.completed += 1
                        return out
        return super().complete_value(return_type, field_details_list, info, path, result, position_context)


def _union_items(type_: Any) -> GraphQLUnionType | None:
    """The union of a [Union!] list type, or None."""
    if isinstance(type_, GraphQLList) and isinstance(type_.of_type, GraphQLNonNull):
        inner = type_.of_type.of_type
        if isinstance(inner, GraphQLUnionType):
            return inner
    return None
