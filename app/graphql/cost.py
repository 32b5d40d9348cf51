"""What a GraphQL document costs, measured before graphql-core's validation rules run.

Why our own rule: graphql-core's rules and Strawberry's depth/alias limiters expand fragment
spreads as they walk, so a 720-byte document whose fragments each spread the next one twice
costs 2^n work (issue 12: 21 levels took 22 s and froze the event loop). The maintained
options we looked at (graphql-core's specified rules, Strawberry's QueryDepthLimiter,
MaxAliasesLimiter and MaxTokensLimiter, graphql-query-complexity-style rules) all either run
as validation rules after the same expansion or walk expanded fragments themselves. So this
walk visits each node of the document once: every fragment's cost is computed once and
reused at each spread (memoized), and every counter saturates at its limit, so the work is
linear in the document's size (plus at most twice max_fields, for merging a fragment's response
names into each selection set that spreads it) whatever its fragments expand to.

Counted after expansion: field selections, fragment spreads, directives, the fields that share
one response name in one selection set (what graphql-core's overlap check compares pairwise),
and nesting (fields, inline fragments and spreads each add a level). Counted as written:
variable definitions, and the items of any list literal. `check_variables` counts the items of
list values in the request's variables (a huge `chargeBatch` list is refused before coercion).
"""

from __future__ import annotations

import gc
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DirectiveNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    ListValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValueNode,
)


@dataclass(frozen=True)
class CostLimits:
    """Each limit is the most accepted; one more is refused."""

    max_fields: int = 2000
    max_fragment_spreads: int = 100
    max_duplicate_fields: int = 30
    max_nesting: int = 30
    max_directives: int = 50
    max_variables: int = 100
    max_list_items: int = 1000
    # Counted by prescan() on the query text, before parsing (issue 17).
    max_operations: int = 10
    max_aliases: int = 30
    max_tokens: int = 4000


class CostExceeded(Exception):
    """The document (or its variables) goes past a limit: `limit` names the setting."""

    def __init__(self, limit: str, maximum: int, message: str) -> None:
        super().__init__(message)
        self.limit, self.maximum, self.message = limit, maximum, message
        self.visited = 0  # the walk's work when it stopped (set by measure)


@dataclass
class _Cost:
    fields: int = 0
    spreads: int = 0
    directives: int = 0
    height: int = 0
    # Response name -> how many selections at this level answer under it (spreads and inline
    # fragments merge into the level they sit in, as graphql-core's overlap check merges them).
    names: dict[str, int] = field(default_factory=dict)


@dataclass
class CostReport:
    fields: int
    spreads: int
    directives: int
    nesting: int
    variables: int
    visited: int  # nodes and memo merges this walk touched: the work done, for tests and logs


class _Walk:
    def __init__(self, doc: DocumentNode, limits: CostLimits, tick: Callable[[], None] | None) -> None:
        self.limits = limits
        self.tick = tick
        self.visited = 0
        self.fragments = {d.name.value: d for d in doc.definitions if isinstance(d, FragmentDefinitionNode)}
        self.memo: dict[str, _Cost] = {}
        self.in_progress: set[str] = set()

    def visit(self, n: int = 1) -> None:
        self.visited += n
        # The per-request CPU budget is checked every 256 steps: a clock read per node would cost more.
        if self.tick is not None and self.visited & 0xFF == 0:
            self.tick()

    def selection_set(self, sel_set: SelectionSetNode, level: int) -> _Cost:
        lim = self.limits
        if level > lim.max_nesting:
            raise CostExceeded("max_nesting", lim.max_nesting, f"selections nest deeper than {lim.max_nesting}")
        out = _Cost()
        for sel in sel_set.selections:
            self.visit()
            self.directives(sel.directives, out)
            if isinstance(sel, FieldNode):
                out.fields += 1
                out.height = max(out.height, 1)
                self.merge_name(out, (sel.alias or sel.name).value, 1)
                for arg in sel.arguments or ():
                    self.value(arg.value)
                if sel.selection_set is not None:
                    self.add(out, self.selection_set(sel.selection_set, level + 1), same_level=False)
            elif isinstance(sel, InlineFragmentNode):
                self.add(out, self.selection_set(sel.selection_set, level + 1), same_level=True)
            elif isinstance(sel, FragmentSpreadNode):
                out.spreads += 1
                self.add(out, self.fragment(sel.name.value, level + 1), same_level=True)
            self.check(out, level)
        return out

    def fragment(self, name: str, level: int) -> _Cost:
        """A fragment's cost relative to where it is spread, computed once per document."""
        known = self.memo.get(name)
        if known is not None:
            return known
        definition = self.fragments.get(name)
        if definition is None or name in self.in_progress:
            # Unknown fragments and cycles are graphql-core's to report (linear rules); they add nothing here.
            return _Cost()
        self.in_progress.add(name)
        try:
            cost = self.selection_set(definition.selection_set, level)
            self.directives(definition.directives, cost)
        finally:
            self.in_progress.discard(name)
        self.memo[name] = cost
        return cost

    def add(self, out: _Cost, child: _Cost, *, same_level: bool) -> None:
        # Saturating sums: a counter stops one past its limit, however often a fragment is spread.
        lim = self.limits
        out.fields = min(out.fields + child.fields, lim.max_fields + 1)
        out.spreads = min(out.spreads + child.spreads, lim.max_fragment_spreads + 1)
        out.directives = min(out.directives + child.directives, lim.max_directives + 1)
        # Heights are relative to the selection set, so a memoized fragment serves every spread.
        out.height = max(out.height, child.height + 1)
        if same_level:
            for name, count in child.names.items():
                self.merge_name(out, name, count)

    def merge_name(self, out: _Cost, name: str, count: int) -> None:
        self.visit()
        total = out.names.get(name, 0) + count
        if total > self.limits.max_duplicate_fields:
            lim = self.limits.max_duplicate_fields
            raise CostExceeded(
                "max_duplicate_fields", lim, f"more than {lim} selections answer as '{name}' in one selection set"
            )
        out.names[name] = total

    def directives(self, nodes: tuple[DirectiveNode, ...] | list[DirectiveNode] | None, out: _Cost) -> None:
        for d in nodes or ():
            self.visit()
            out.directives += 1
            for arg in d.arguments or ():
                self.value(arg.value)

    def value(self, node: ValueNode) -> None:
        """List sizes and nesting of an argument literal, iteratively (a literal may nest 1000 deep)."""
        lim = self.limits
        stack: list[tuple[ValueNode, int]] = [(node, 0)]
        while stack:
            current, depth = stack.pop()
            self.visit()
            if depth > lim.max_nesting:
                raise CostExceeded("max_nesting", lim.max_nesting, f"a value nests deeper than {lim.max_nesting}")
            if isinstance(current, ListValueNode):
                if len(current.values) > lim.max_list_items:
                    raise CostExceeded(
                        "max_list_items", lim.max_list_items, f"a list has more than {lim.max_list_items} items"
                    )
                stack.extend((v, depth + 1) for v in current.values)
            elif isinstance(current, ObjectValueNode):
                stack.extend((f.value, depth + 1) for f in current.fields)

    def check(self, c: _Cost, level: int | None) -> None:
        lim = self.limits
        if c.fields > lim.max_fields:
            raise CostExceeded("max_fields", lim.max_fields, f"the query selects more than {lim.max_fields} fields")
        if c.spreads > lim.max_fragment_spreads:
            raise CostExceeded(
                "max_fragment_spreads",
                lim.max_fragment_spreads,
                f"the query spreads fragments more than {lim.max_fragment_spreads} times",
            )
        if c.directives > lim.max_directives:
            raise CostExceeded(
                "max_directives", lim.max_directives, f"the query uses more than {lim.max_directives} directives"
            )
        if level is not None and level - 1 + c.height > lim.max_nesting:
            raise CostExceeded("max_nesting", lim.max_nesting, f"selections nest deeper than {lim.max_nesting}")


def measure(doc: DocumentNode, limits: CostLimits, tick: Callable[[], None] | None = None) -> CostReport:
    """The document's cost; raises CostExceeded at the first limit passed. `tick` is called every
    few hundred steps (the request's CPU budget check)."""
    walk = _Walk(doc, limits, tick)
    try:
        return _measure(doc, walk)
    except CostExceeded as exc:
        exc.visited = walk.visited
        raise


def _measure(doc: DocumentNode, walk: _Walk) -> CostReport:
    limits = walk.limits
    total = _Cost()
    nesting = variables = 0
    parts: list[_Cost] = []
    for definition in doc.definitions:
        walk.visit()
        if isinstance(definition, OperationDefinitionNode):
            variables += len(definition.variable_definitions or ())
            if variables > limits.max_variables:
                raise CostExceeded(
                    "max_variables", limits.max_variables, f"more than {limits.max_variables} variables are declared"
                )
            for var in definition.variable_definitions or ():
                if var.default_value is not None:
                    walk.value(var.default_value)
            walk.directives(definition.directives, total)
            parts.append(walk.selection_set(definition.selection_set, 1))
    for name in walk.fragments:
        # Fragments no operation spreads still cost validation: measure each once.
        if name not in walk.memo:
            parts.append(walk.fragment(name, 1))
    for part in parts:
        nesting = max(nesting, part.height)
        walk.add(total, part, same_level=False)
        walk.check(total, None)
    return CostReport(
        fields=total.fields,
        spreads=total.spreads,
        directives=total.directives,
        nesting=nesting,
        variables=variables,
        visited=walk.visited,
    )


# The tokens prescan() needs, found by one C-level regex scan: block strings and strings (whose
# content must not count), comments, names and the punctuation that tells a selection set from
# arguments. Everything else (numbers, `$`, `!`, `=`, `@`, `[`, `]`, `...`, commas, spaces) is
# skipped by finditer without a token.
_TOKEN = re.compile(r'"""(?:\\"""|[^"]|"(?!""))*"""|"(?:[^"\\\n\r]|\\.)*"|#[^\n\r]*|[_A-Za-z][_0-9A-Za-z]*|[{}():]')


def prescan(query: str, limits: CostLimits) -> tuple[int, int]:
    """Count the operations and aliases of a query text before anything parses it; raise
    CostExceeded past max_operations or max_aliases. Returns (operations, aliases).

    Why before parsing: a 20 KB document of 780 operations or 1,300 aliases is under the token
    limit, and graphql-core's parse (~18 ms) and validation of every operation (~50-90 ms) ran
    in full before the alias limiter or anything else could refuse it. This scan is one regex
    pass (~2 ms for such a document) and stops at the first limit passed.

    The counts are of the text as written, so they never refuse what validation would accept:
    an alias is a name followed by `:` inside braces and outside parentheses (arguments,
    variable definitions and object values are always inside parentheses in an executable
    document), and Strawberry's alias limiter counts every operation's aliases with fragments
    expanded, which is at least the written count when every fragment is used (an unused one is
    refused by validation anyway). An operation is a top-level definition that is not a
    fragment. A malformed text may be miscounted; the parser refuses it whatever the count.
    Past max_tokens of its tokens the scan stops: the parser refuses that document at its own
    token limit, so scanning the rest of a large body would be wasted."""
    max_ops, max_aliases, max_tokens = limits.max_operations, limits.max_aliases, limits.max_tokens
    braces = parens = operations = aliases = tokens = 0
    top = True  # the next token at depth 0 starts a definition
    after_name = False
    for match in _TOKEN.finditer(query):
        tok = match.group()
        c = tok[0]
        if c == "#":
            continue  # a comment is no token for the parser either
        tokens += 1
        if tokens > max_tokens:
            break
        if c == "{":
            if top and braces == 0 and parens == 0:
                operations += 1  # an anonymous operation: `{ ... }`
                top = False
            braces += 1
        elif c == "}":
            braces -= 1
            if braces == 0 and parens == 0:
                top = True
        elif c == "(":
            parens += 1
        elif c == ")":
            parens -= 1
        elif c == ":":
            if after_name and braces > 0 and parens == 0:
                aliases += 1
                if aliases > max_aliases:
                    raise CostExceeded("max_aliases", max_aliases, f"the query has more than {max_aliases} aliases")
        elif c != '"' and top and braces == 0 and parens == 0:
            top = False
            if tok != "fragment":
                operations += 1
                if operations > max_ops:
                    raise CostExceeded("max_operations", max_ops, f"the document has more than {max_ops} operations")
        after_name = c not in '{}():"'
    return operations, aliases


def check_variables(variables: Any, limits: CostLimits) -> int:
    """Refuse list values longer than max_list_items (or nested deeper than max_nesting) in the
    request's JSON variables, before graphql-core coerces them. Returns the values visited."""
    # Only lists and objects go on the stack: a scalar can break no limit, so it is counted
    # where it is seen (a chargeBatch of 50 has ~4 scalars per item and 2 containers).
    max_items, max_nesting = limits.max_list_items, limits.max_nesting
    stack: list[tuple[Any, int]] = [(variables, 0)]
    visited = 0
    while stack:
        value, depth = stack.pop()
        visited += 1
        children: Any
        if isinstance(value, list):
            if len(value) > max_items:
                raise CostExceeded("max_list_items", max_items, f"a variable holds more than {max_items} items")
            if depth >= max_nesting:
                continue  # deep JSON is the metadata validator's to refuse, with its own field
            children = value
        elif isinstance(value, dict) and depth < max_nesting:
            children = value.values()
        else:
            continue
        for v in children:
            if isinstance(v, list | dict):
                stack.append((v, depth + 1))
            else:
                visited += 1
    return visited


def cpu_deadline(budget_ms: float) -> Callable[[], None]:
    """A check that raises BudgetExceeded once this thread has spent budget_ms of CPU from now,
    not counting the cyclic garbage collector's passes that happened to run in it meanwhile
    (a full collection of a big heap is not this request's cost, and must not get a hot
    query refused)."""
    start = time.thread_time() - _gc_cpu()
    deadline = start + budget_ms / 1000.0

    def tick() -> None:
        if time.thread_time() - _gc_cpu() > deadline:
            raise BudgetExceeded(budget_ms)

    return tick


_GC = threading.local()


def _gc_cpu() -> float:
    return getattr(_GC, "spent", 0.0)  # type: ignore[no-any-return]


def _on_gc(phase: str, _info: dict[str, Any]) -> None:
    # Runs in the thread that triggered the collection: its CPU time there is set aside.
    if phase == "start":
        _GC.started = time.thread_time()
    elif hasattr(_GC, "started"):
        _GC.spent = _gc_cpu() + time.thread_time() - _GC.started


gc.callbacks.append(_on_gc)


class BudgetExceeded(Exception):
    def __init__(self, budget_ms: float) -> None:
        super().__init__(f"parsing and validating the query took more than {budget_ms:g} ms of CPU")
        self.budget_ms = budget_ms
