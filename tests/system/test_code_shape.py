"""The code's shape, as counts that cannot drift unnoticed: no import cycle between modules of app
or bench (import-linter's contracts in `make lint` hold the layers; a cycle inside one layer is
this test's), and no hand-written module past the size one can hold in mind."""

from __future__ import annotations

from pathlib import Path

import grimp

from tests.paths import ROOT

MAX_MODULE_LINES = 600
# Written by tools, not by hand: ariadne-codegen's client (make client) and the vendored GraphiQL.
GENERATED = ("clients/python/meterkit_client/generated/",)


def _cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(imports):
        if root in index:
            continue
        work = [(root, iter(sorted(imports[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(imports.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    # Imports under `if TYPE_CHECKING:` count: a cycle there is still two modules that must be
    # understood together.
    graph = grimp.build_graph("app", "bench", cache_dir=None)
    imports = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(imports) == []


def test_no_hand_written_module_over_the_limit() -> None:
    over = {}
    for folder in ("app", "bench", "clients/python"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(GENERATED):
                continue
            lines = len(path.read_text().splitlines())
            if lines > MAX_MODULE_LINES:
                over[rel] = lines
    assert over == {}, f"split these along their seams: {over}"


def test_the_code_names_no_product_brief() -> None:
    # Code and schema text say what the behaviour is; "the brief" tells a reader nothing.
    hits = []
    for folder in ("app", "bench", "tests", "migrations", "clients/python"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == Path(__file__):
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if "the brief" in line.lower() or "brief's" in line.lower():
                    hits.append(f"{path.relative_to(ROOT)}:{n}")
    schema = (ROOT / "schema.graphql").read_text().lower()
    if "brief" in schema:
        hits.append("schema.graphql")
    assert hits == []
