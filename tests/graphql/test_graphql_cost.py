"""Issue 12, point 2: the cost rule refuses every known bad shape before graphql-core's
validation, in milliseconds, with a typed error; its work is linear in the document (asserted
on the rule's visited-step counter, not only on the clock); the caches still hit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from graphql import parse

from app.graphql.cost import CostExceeded, CostLimits, measure
from app.graphql.guard import validation_cache_info
from app.settings import Settings
from tests.conftest import ALL_TABLES, Api, count_rows
from tests.error_shape import without_request_id


@pytest.fixture
def settings() -> Settings:
    # As conftest's, with room for aliases: several shapes here reach the walk's limits through
    # aliased fields, and the alias count on the text (app/graphql/cost.py prescan, before
    # parsing) would refuse them first. That prescan has its own tests (tests/http/test_edge_limits.py).
    return Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=0, max_aliases=100_000)


def fan_out_chain(levels: int) -> str:
    # Each fragment spreads the next twice: 2^levels selections once expanded (issue 12's 720 bytes).
    frags = [f"fragment F{i} on Query{{...F{i + 1} ...F{i + 1}}}" for i in range(levels)]
    return " ".join(["query{...F0}", *frags, f"fragment F{levels} on Query{{__typename}}"])


def fan_out_fields(levels: int) -> str:
    # The same chain with a field at each level.
    frags = [f"fragment F{i} on Query{{a{i}: __typename ...F{i + 1} ...F{i + 1}}}" for i in range(levels)]
    return " ".join(["query{...F0}", *frags, f"fragment F{levels} on Query{{__typename}}"])


ITEM = {"item": {"primitive": "email.send", "idempotencyKey": "k"}}

# shape -> (document, variables, the limit that refuses it)
SHAPES: dict[str, tuple[str, dict[str, Any] | None, str]] = {
    "fan-out chain, 21 levels": (fan_out_chain(21), None, "max_duplicate_fields"),
    "fan-out chain, 40 levels": (fan_out_chain(40), None, "max_nesting"),
    "wide fan-out": (
        "{ "
        + " ".join(f"...F{i}" for i in range(101))
        + " } "
        + " ".join(f"fragment F{i} on Query {{ f{i}: __typename }}" for i in range(101)),
        None,
        "max_fragment_spreads",
    ),
    "deep inline fragments": ("{ " + "... on Query { " * 31 + "__typename" + " }" * 31 + " }", None, "max_nesting"),
    "many directives": ("{ __typename " + "@include(if: true) " * 51 + "}", None, "max_directives"),
    "many duplicate fields": ("{ " + "plans { key } " * 31 + "}", None, "max_duplicate_fields"),
    "duplicates through fragments": (
        "{ "
        + " ".join(f"...F{i}" for i in range(31))
        + " } "
        + " ".join(f"fragment F{i} on Query {{ plans {{ key }} }}" for i in range(31)),
        None,
        "max_duplicate_fields",
    ),
    "many fields": (
        "{ "
        + " ".join(f"p{i}: plans {{ ...P }}" for i in range(60))
        + " } fragment P on Plan { "
        + " ".join(f"k{j}: key" for j in range(40))
        + " }",
        None,
        "max_fields",
    ),
    "huge variable list": (
        "query(" + " ".join(f"$v{i}: Int" for i in range(101)) + ") { __typename }",
        None,
        "max_variables",
    ),
    # A chargeBatch literal of 1001 items is already past the token limit; a list of strings is not.
    "huge list literal": (
        'mutation { upsertAccountKit(input: {key: "k", name: "k", allowedPrimitives: ['
        + " ".join(f'"p{i}"' for i in range(1001))
        + "]}) { __typename } }",
        None,
        "max_list_items",
    ),
    "huge chargeBatch variable": (
        "mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename } }",
        {"items": [ITEM] * 1001},
        "max_list_items",
    ),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_each_bad_shape_is_refused_fast_and_typed(api: Api, shape: str) -> None:
    doc, variables, limit = SHAPES[shape]
    tenant = api.create_tenant()
    before = count_rows(api.db.engine, *ALL_TABLES)
    started = time.perf_counter()
    body = api(doc, variables, tenant=tenant, expect_errors=True)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"{shape} took {elapsed:.2f}s"
    assert body.get("data") is None, body
    (err,) = body["errors"]
    assert err["extensions"]["code"] == "QUERY_TOO_COMPLEX" and err["extensions"]["limit"] == limit, err
    assert err["message"].startswith("query refused: ")
    assert count_rows(api.db.engine, *ALL_TABLES) == before
    if variables is None:
        # The work counter: the walk's steps stay within the document's size plus the field cap
        # (a spread merges its fragment's names, each an expanded field), where expansion would
        # have meant 2^21 steps or more.
        limits = CostLimits()
        with pytest.raises(CostExceeded) as exc:
            measure(parse(doc, max_tokens=20_000), limits)
        assert exc.value.limit == limit
        assert 0 < exc.value.visited <= 2 * len(doc.split()) + 2 * limits.max_fields, exc.value.visited


def test_expanded_counts_saturate_and_the_walk_stays_linear() -> None:
    # Limits high enough that only the field count stops the chain: the counter saturates at the
    # cap instead of growing to 2^40, and the walk visits each fragment once.
    limits = CostLimits(max_nesting=100, max_duplicate_fields=10**9, max_fragment_spreads=10**9)
    for levels in (21, 40):
        with pytest.raises(CostExceeded) as exc:
            measure(parse(fan_out_fields(levels)), limits)
        assert exc.value.limit == "max_fields"
        assert exc.value.visited < 12 * levels, exc.value.visited
    # Under every limit: accepted, and the counts are the expanded ones: 1 + 2 + 4 fields above
    # the last fragment and 8 of it, 1 + 2 + 4 + 8 spreads, and each spread a level.
    report = measure(parse(fan_out_fields(3)), limits)
    assert (report.fields, report.spreads, report.nesting) == (15, 15, 5)


@pytest.mark.parametrize(
    ("make", "limit", "at_limit"),
    [
        (lambda n: "{ " + "__typename " * n + "}", "max_duplicate_fields", 30),
        (lambda n: "{ __typename " + "@include(if: true) " * n + "}", "max_directives", 50),
        (lambda n: "{ " + "... on Query { " * (n - 1) + "__typename" + " }" * (n - 1) + " }", "max_nesting", 30),
        (lambda n: "query(" + " ".join(f"$v{i}: Int" for i in range(n)) + ") { __typename }", "max_variables", 100),
    ],
)
def test_each_limit_is_the_most_accepted(api: Api, make: Callable[[int], str], limit: str, at_limit: int) -> None:
    ok = api(make(at_limit), expect_errors=True)
    assert all(e.get("extensions", {}).get("code") != "QUERY_TOO_COMPLEX" for e in ok.get("errors", [])), ok
    over = api(make(at_limit + 1), expect_errors=True)
    assert without_request_id(over["errors"][0]["extensions"]) == {
        "code": "QUERY_TOO_COMPLEX",
        "limit": limit,
        "max": at_limit,
    }


def test_limits_follow_settings(db: Any, clock: Any) -> None:
    from starlette.testclient import TestClient

    from app.core.db import unit_of_work
    from app.main import create_app
    from app.settings import Settings
    from app.tenants.service import create_api_key

    app = create_app(Settings(env="test", max_duplicate_fields=2, auth_cache_seconds=0), engine=db.engine, clock=clock)
    with unit_of_work(db.engine) as s:
        _, raw = create_api_key(s, clock, role="operator", scope=None, name="t")
    with TestClient(app) as client:
        h = {"Authorization": f"Bearer {raw}"}
        ok = client.post("/graphql", json={"query": "{ __typename __typename }"}, headers=h).json()
        assert ok == {"data": {"__typename": "Query"}}
        over = client.post("/graphql", json={"query": "{ __typename __typename __typename }"}, headers=h).json()
        assert over["errors"][0]["extensions"]["max"] == 2


def test_a_repeated_document_hits_both_caches(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the generic path the second identical query costs a parse cache hit, a verdict lookup
    and a validation cache hit, not a parse, a walk and a validation; on the hot path (a document
    accepted before, app/graphql/hot.py) none of the three."""
    from app.graphql.guard import Gateway
    from app.graphql.hot import HotDocuments

    query = "{ plans { key } __typename }"
    api(query)
    configs = []
    for ext in api.client.app.state.meterkit.schema.extensions:  # type: ignore[attr-defined]
        instance = ext()
        if isinstance(instance, Gateway):
            configs.append(instance.config)
    (config,) = configs
    verdicts, parsed_cache, hot = config.verdicts, config.parsed, config.hot
    assert hot is not None

    def counts() -> tuple[int, int, int, int, int]:
        v = validation_cache_info()
        return verdicts.hits, parsed_cache.hits, parsed_cache.misses, v.hits, v.misses

    before, hot_hits = counts(), hot.hits
    api(query)
    assert counts() == before and hot.hits == hot_hits + 1
    with monkeypatch.context() as m:
        m.setattr(HotDocuments, "get", lambda *_: None)  # the generic path
        api(query)
        assert counts() == (before[0] + 1, before[1] + 1, before[2], before[3] + 1, before[4])
        # Another document text (new: the validation cache outlives a test) is parsed and validated
        # once, then hits too.
        other = "{ __typename plans { key } } # " + uuid.uuid4().hex
        api(other)
        api(other)
        assert counts() == (before[0] + 2, before[1] + 2, before[2] + 1, before[3] + 2, before[4] + 1)


def test_refused_documents_are_remembered(api: Api) -> None:
    doc = fan_out_chain(21)
    first = api(doc, expect_errors=True)["errors"][0]
    misses = validation_cache_info().misses
    again = api(doc, expect_errors=True)["errors"][0]
    # The same error again (each with its own request's id).
    assert {**again, "extensions": without_request_id(again["extensions"])} == {
        **first,
        "extensions": without_request_id(first["extensions"]),
    }
    assert validation_cache_info().misses == misses  # never validated at all


def test_cpu_budget_refuses_past_it(db: Any, clock: Any) -> None:
    from starlette.testclient import TestClient

    from app.core.db import unit_of_work
    from app.main import create_app
    from app.settings import Settings
    from app.tenants.service import create_api_key

    # A budget no parse can meet: every new document is refused, with the typed error.
    app = create_app(
        Settings(env="test", graphql_cpu_budget_ms=0.001, auth_cache_seconds=0), engine=db.engine, clock=clock
    )
    with unit_of_work(db.engine) as s:
        _, raw = create_api_key(s, clock, role="operator", scope=None, name="t")
    with TestClient(app) as client:
        # Twice: a document refused while parsing is not kept by the parse cache, so it is refused again.
        for _ in range(2):
            r = client.post("/graphql", json={"query": "{ plans { key } }"}, headers={"Authorization": f"Bearer {raw}"})
            assert r.status_code == 200
            (err,) = r.json()["errors"]
            assert without_request_id(err["extensions"]) == {
                "code": "QUERY_TOO_COMPLEX",
                "limit": "graphql_cpu_budget_ms",
                "max": 0.001,
            }


def test_cpu_budget_sets_garbage_collection_aside() -> None:
    """A full collection of a big heap in the middle of a request is not that request's cost:
    it once got a query at a limit refused (a flaky suite, and in production the refusal is
    remembered for the document). Busy work of the request's own still counts."""
    import gc

    from app.graphql.cost import BudgetExceeded, cpu_deadline

    junk: list[list[Any]] = []
    for _ in range(500_000):
        cell: list[Any] = []
        cell.append(cell)
        junk.append(cell)
    tick = cpu_deadline(20)
    started = time.thread_time()
    gc.collect()
    assert time.thread_time() - started > 0.02  # the collection alone is past the budget
    tick()  # not refused
    del junk
    busy_until = time.thread_time() + 0.03
    while time.thread_time() < busy_until:
        pass
    with pytest.raises(BudgetExceeded):
        tick()
