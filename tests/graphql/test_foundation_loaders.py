"""Operator pages cost a constant number of SQL statements, whatever the page size: every
relation of a tenant goes through the request's DataLoaders."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from tests.conftest import Api
from tests.fixtures_catalog import SET_SUB, seed_catalog

PAGE = """query($n: Int!) { tenants(first: $n) { nodes { id name
  plan { key accountKit { key } quotas { primitive quota } }
  accountKit { key limits { primitive } }
  subscription { status planKey } } } }"""


@contextmanager
def _statements(api: Api) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(api.db.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(api.db.engine, "before_cursor_execute", count)


def _page_cost(api: Api, n: int) -> int:
    with _statements(api) as seen:
        nodes = api(PAGE, {"n": n})["tenants"]["nodes"]
    assert len(nodes) == n
    return len(seen)


def test_tenant_page_costs_the_same_for_4_and_24_tenants(api: Api) -> None:
    seed_catalog(api)
    for i in range(24):
        tid = api.create_tenant(f"T{i}")
        if i % 2:
            api(SET_SUB, {"t": tid, "i": {"planKey": "pro", "assignKit": i % 4 == 1}})
    small, large = _page_cost(api, 4), _page_cost(api, 24)
    # The first 4 already mix every kind (free, pro following its kit, pro pinned to a kit). Which
    # loads land in the same batch depends on when each resolver awaits, so a count may move by a
    # batch or two between runs; one statement per tenant would add 20 or more.
    assert large <= small + 2, (small, large)
    # And it is small: auth, the page, then one batch per relation.
    assert large <= 16, large
