"""Issue 12, point 6: the standing abuse suite. hypothesis-graphql generates queries and
mutations from the served schema (valid ones, and invalid ones in its NEGATIVE mode), mixed
with hostile fragment shapes, sent with an operator key (alone and acting for a tenant), a
tenant key and no key. Whatever arrives: never a 5xx, never an "Unexpected error.", no key is
always a 401 before parsing, no document over a cost limit is accepted, and conftest's
after-test reconcile finds zero drift in the books. Bounded examples (seconds per database)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from graphql import GraphQLSyntaxError, parse
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, nodes, queries

from app.graphql.cost import CostExceeded, CostLimits, measure
from app.settings import Settings
from tests.conftest import Api
from tests.fixtures_catalog import SET_SUB, seed_catalog
from tests.schema_walk import graphql_schema

SCHEMA = graphql_schema()
LIMITS = CostLimits()  # the defaults the `api` fixture's app runs with
MAX_TOKENS = Settings().max_tokens

SCALARS = {
    "Credits": st.sampled_from(["0", "1", "0.5", "-1", "1e3", "x", "99999999999999"]).map(nodes.String),
    "DateTime": st.sampled_from(["2026-07-01T12:00:00Z", "not a date", ""]).map(nodes.String),
    "JSON": st.sampled_from([nodes.Object([]), nodes.String("x"), nodes.Int(1)]),
}


@st.composite
def hostile(draw: st.DrawFn) -> str:
    """The shapes issue 12 names, with random sizes around the limits."""
    n = draw(st.integers(1, 45))
    kind = draw(st.sampled_from(["chain", "wide", "dups", "inline", "directives"]))
    if kind == "chain":
        frags = [f"fragment F{i} on Query{{...F{i + 1} ...F{i + 1}}}" for i in range(n)]
        return " ".join(["query{...F0}", *frags, f"fragment F{n} on Query{{__typename}}"])
    if kind == "wide":
        m = n * 6
        return "{ " + " ".join(f"...F{i}" for i in range(m)) + " } " + " ".join(
            f"fragment F{i} on Query {{ a{i}: __typename }}" for i in range(m)
        )
    if kind == "dups":
        return "{ " + "plans { key } " * n + "}"
    if kind == "inline":
        return "{ " + "... on Query { " * n + "__typename" + " }" * n + " }"
    return "{ __typename " + "@include(if: true) " * (n + 10) + "}"


def generated() -> st.SearchStrategy[str]:
    def gen(mode: Mode) -> st.SearchStrategy[Any]:
        return st.one_of(
            queries(SCHEMA, custom_scalars=SCALARS, mode=mode, allow_x00=False, codec=None),
            mutations(SCHEMA, custom_scalars=SCALARS, mode=mode, allow_x00=False, codec=None),
        )

    return st.one_of(gen(Mode.POSITIVE), gen(Mode.NEGATIVE)).map(str)


def _over_limit(doc: str) -> bool | None:
    """True when the cost rule must refuse the document; None when it does not even parse."""
    try:
        measure(parse(doc, max_tokens=MAX_TOKENS), LIMITS)
    except GraphQLSyntaxError:
        return None
    except CostExceeded:
        return True
    return False


FUZZ = dict(
    deadline=None,
    database=None,
    derandomize=True,
    # No shrinking: a failure reports the example as generated, and CI time stays bounded.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.timeout(240)
def test_abuse_suite(api: Api) -> None:
    seed_catalog(api)
    tenant = api.create_tenant("Fuzz")
    api(SET_SUB, {"t": tenant, "i": {"planKey": "pro"}})
    callers = {
        "operator": {"Authorization": f"Bearer {api.operator_key}"},
        "operator for tenant": {"Authorization": f"Bearer {api.operator_key}", "X-Tenant-Id": tenant},
        "tenant": {"Authorization": f"Bearer {api.tenant_key(tenant)}"},
        "no key": {},
    }
    seen: dict[str, int] = {"refused by cost": 0, "accepted": 0, "401": 0}

    def send(doc: str) -> None:
        """One document from every caller."""
        over = _over_limit(doc)
        for who, headers in callers.items():
            r = api.client.post("/graphql", json={"query": doc}, headers=headers)
            assert r.status_code < 500, (who, doc, r.text)
            assert "Unexpected error." not in r.text, (who, doc, r.text)
            if who == "no key":
                assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHENTICATED", r.text
                seen["401"] += 1
                continue
            body = r.json()
            codes = [e.get("extensions", {}).get("code") for e in body.get("errors") or []]
            limits = [e.get("extensions", {}).get("limit") for e in body.get("errors") or []]
            if over:
                assert body.get("data") is None and codes == ["QUERY_TOO_COMPLEX"], (who, doc, json.dumps(body)[:500])
                seen["refused by cost"] += 1
            else:
                # Under every cost limit, only the CPU budget may still refuse (a slow, busy machine).
                assert set(limits) <= {None, "graphql_cpu_budget_ms"}, (who, doc, json.dumps(body)[:500])
                seen["accepted"] += body.get("data") is not None

    @settings(max_examples=40, **FUZZ)  # type: ignore[arg-type]
    @given(doc=generated())
    def from_schema(doc: str) -> None:
        send(doc)

    @settings(max_examples=25, **FUZZ)  # type: ignore[arg-type]
    @given(doc=hostile())
    def hostile_shapes(doc: str) -> None:
        send(doc)

    from_schema()
    hostile_shapes()
    # The run did reach every kind of answer (a fuzz that only ever sent garbage proves little).
    assert all(seen.values()), seen


@pytest.mark.parametrize(
    ("doc", "variables"),
    [
        ('mutation { grantCredits(tenantId: "ten_0", amount: "x", idempotencyKey: "k") { __typename } }', None),
        (
            'mutation { grantCredits(tenantId: "ten_0", amount: "1", idempotencyKey: "k", expiresAt: "soon") '
            "{ __typename } }",
            None,
        ),
        (
            'mutation($a: Credits!) { grantCredits(tenantId: "ten_0", amount: $a, idempotencyKey: "k") '
            "{ __typename } }",
            {"a": "x"},
        ),
    ],
)
def test_a_scalar_refusing_a_value_is_a_readable_error(
    api: Api, doc: str, variables: dict[str, Any] | None, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the suite: a bad Credits or DateTime literal was answered "Unexpected error." and
    logged as a server error; it is the caller's mistake, said in the scalar's own words (a bad
    DateTime), or as the typed ValidationError naming the field that every Credits input gets."""
    body = api(doc, variables, expect_errors=True)
    assert "Unexpected error." not in json.dumps(body)
    if "DateTime" not in doc and "expiresAt" not in doc:
        assert body.get("errors") is None, body
        assert body["data"]["grantCredits"]["__typename"] == "ValidationError", body
    else:
        assert body.get("data") is None and body["errors"], body
        assert "DateTime" in json.dumps(body), body
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
