"""GraphQL hardening: depth, alias and token limits, error masking, body size, GET, and
what production turns off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from graphql.validation import NoSchemaIntrospectionCustomRule
from starlette.testclient import TestClient

from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.graphql.guard import Gateway, GatewayRunner
from app.graphql.schema import build_schema
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.conftest import ALL_TABLES, Api, Database, count_rows
from tests.error_shape import without_request_id
from tests.fixtures_catalog import PLAN, seed_catalog


def _client(db: Database, clock: FrozenClock, **settings: Any) -> Iterator[tuple[TestClient, dict[str, str]]]:
    app = create_app(Settings(**{"env": "test", **settings}), engine=db.engine, clock=clock)
    with unit_of_work(db.engine) as s:
        _, raw = create_api_key(s, clock, role="operator", scope=None, name="quality")
    with TestClient(app) as client:
        yield client, {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def tight(db: Database, clock: FrozenClock) -> Iterator[tuple[TestClient, dict[str, str]]]:
    yield from _client(db, clock, max_query_depth=2, max_aliases=3, max_tokens=60, max_body_bytes=2048)


@pytest.fixture
def production(db: Database, clock: FrozenClock) -> Iterator[tuple[TestClient, dict[str, str]]]:
    yield from _client(db, clock, env="production")


def _extension_instances(settings: Settings) -> list[Any]:
    schema = build_schema(settings)
    # Entries are classes or factories; either way calling one gives the per-request extension.
    return [e() if callable(e) else e for e in schema.extensions]


def test_caches_and_guards_are_configured() -> None:
    # Every guard lives in one per-request extension, the Gateway (app/graphql/guard.py): parse
    # cache, token limit, cost verdict, cached validation, permissions, masking. The tests below
    # and tests/graphql/test_graphql_cost.py check that each is enforced and that the caches hit.
    (dev,) = _extension_instances(Settings(env="development"))
    (prod,) = _extension_instances(Settings(env="production"))
    assert isinstance(dev, Gateway) and isinstance(prod, Gateway)
    assert dev.config.max_tokens == 4000 and dev.config.limits.max_fields == 2000
    # The depth and alias limits are rules built once per schema, so the validation cache hits.
    assert len(dev.config.rules) == 2
    assert NoSchemaIntrospectionCustomRule not in dev.config.rules
    assert prod.config.rules[-1] is NoSchemaIntrospectionCustomRule and prod.config.hide_suggestions
    # A fresh extension per request: no instance is shared between two requests.
    schema = build_schema(Settings())
    assert all(callable(e) for e in schema.extensions)
    first = [e() for e in schema.extensions]
    second = [e() for e in schema.extensions]
    assert all(a is not b for a, b in zip(first, second, strict=True))
    # The schema runs it with plain calls, not Strawberry's per-hook context managers.
    assert isinstance(schema.create_extensions_runner(None, first), GatewayRunner)  # type: ignore[arg-type]


def _post(client: TestClient, headers: dict[str, str], query: str, **kw: Any) -> Any:
    return client.post("/graphql", json={"query": query, **kw}, headers=headers)


def test_depth_limit(tight: tuple[TestClient, dict[str, str]]) -> None:
    client, h = tight
    ok = _post(client, h, "{ plans { accountKit { key } } }")
    assert ok.status_code == 200 and ok.json()["data"] == {"plans": []}
    body = _post(client, h, "{ plans { accountKit { limits { primitive } } } }").json()
    assert body["data"] is None
    assert "exceeds maximum operation depth of 2" in body["errors"][0]["message"]


def test_alias_limit(tight: tuple[TestClient, dict[str, str]]) -> None:
    client, h = tight
    assert _post(client, h, "{ a: plans { key } b: plans { key } c: plans { key } }").json()["data"]["a"] == []
    body = _post(client, h, "{ a: plans { key } b: plans { key } c: plans { key } d: plans { key } }").json()
    assert body["data"] is None
    # Counted on the text before parsing (app/graphql/cost.py prescan), with the cost limits' error.
    assert body["errors"][0]["message"] == "query refused: the query has more than 3 aliases"
    extensions = without_request_id(body["errors"][0]["extensions"])
    assert extensions == {"code": "QUERY_TOO_COMPLEX", "limit": "max_aliases", "max": 3}


def test_token_limit(tight: tuple[TestClient, dict[str, str]]) -> None:
    client, h = tight
    body = _post(client, h, "{ " + "plans { key } " * 20 + "}").json()
    assert body["data"] is None
    assert "more than 60 tokens" in body["errors"][0]["message"]


def test_default_limits_hold(api: Api) -> None:
    many_aliases = "{ " + " ".join(f"a{i}: __typename" for i in range(31)) + " }"
    body = api(many_aliases, expect_errors=True)
    assert body["errors"][0]["message"] == "query refused: the query has more than 30 aliases"
    huge = "{ " + "__typename " * 4001 + "}"
    assert "more than 4000 tokens" in api(huge, expect_errors=True)["errors"][0]["message"]


def test_unexpected_errors_are_masked_and_typed_errors_stay_readable(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from app.plans import service as plan_service
    from app.plans.repository import PlanRepository

    seed_catalog(api)
    before = count_rows(api.db.engine, *ALL_TABLES)

    def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(plan_service, "upsert_plan", boom)
    body = api(PLAN, {"i": {"key": "x", "name": "X", "accountKitId": "kit_pro"}}, expect_errors=True)
    assert body["data"] is None
    assert [e["message"] for e in body["errors"]] == ["Unexpected error."]
    assert "hunter2" not in json.dumps(body)
    # The real error is logged for the operator.
    assert any("hunter2" in repr(r.exc_info) for r in caplog.records if r.exc_info)
    assert count_rows(api.db.engine, *ALL_TABLES) == before

    # A query resolver too.
    monkeypatch.setattr(PlanRepository, "all", boom)
    body = api("{ plans { key } }", expect_errors=True)
    assert [e["message"] for e in body["errors"]] == ["Unexpected error."] and "hunter2" not in json.dumps(body)

    # Typed results and request errors keep their text.
    res = api('mutation { archivePlan(key: "nope") { ... on UserError { code message } } }')
    assert res["archivePlan"] == {"code": "NOT_FOUND", "message": "Plan 'nope' not found"}
    syntax = api("{ plans { key }", expect_errors=True)["errors"][0]["message"]
    assert syntax.startswith("Syntax Error")
    unknown = api("{ nope }", expect_errors=True)["errors"][0]["message"]
    assert unknown == "Cannot query field 'nope' on type 'Query'."


def test_body_over_limit_is_413_and_writes_nothing(tight: tuple[TestClient, dict[str, str]], db: Database) -> None:
    client, h = tight
    before = count_rows(db.engine, *ALL_TABLES)
    payload = {
        "query": "mutation($i: CreateTenantInput!) { createTenant(input: $i) { __typename } }",
        "variables": {"i": {"name": "Big", "metadata": {"x": "y" * 3000}}},
    }
    r = client.post("/graphql", json=payload, headers=h)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    # Without a Content-Length (chunked): still refused while reading.
    raw = json.dumps(payload).encode()
    chunks = (raw[i : i + 500] for i in range(0, len(raw), 500))
    r = client.post("/graphql", content=chunks, headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert count_rows(db.engine, *ALL_TABLES) == before
    # Under the limit the same mutation goes through.
    small = {**payload, "variables": {"i": {"name": "Small", "metadata": {"x": "y"}}}}
    assert client.post("/graphql", json=small, headers=h).json()["data"]["createTenant"]["__typename"] == "Tenant"


def test_queries_over_get_are_refused(api: Api) -> None:
    h = {"Authorization": f"Bearer {api.operator_key}", "Accept": "application/json"}
    before = count_rows(api.db.engine, *ALL_TABLES)
    for query in ("{ plans { key } }", 'mutation { createTenant(input: {name: "x"}) { __typename } }'):
        r = api.client.get("/graphql", params={"query": query}, headers=h)
        assert r.status_code in (400, 405), r.text
        assert "plans" not in r.text and "Tenant" not in r.text
    assert count_rows(api.db.engine, *ALL_TABLES) == before


def test_graphiql_and_introspection_on_by_default(api: Api) -> None:
    page = api.client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    data = api('{ __type(name: "Tenant") { name } }')
    assert data == {"__type": {"name": "Tenant"}}


def test_production_turns_off_graphiql_and_introspection(production: tuple[TestClient, dict[str, str]]) -> None:
    client, h = production
    page = client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 405 and "graphiql" not in page.text.lower()
    assert client.get("/graphiql-assets/graphiql@3.8.3/graphiql.min.js").status_code == 404
    body = _post(client, h, "{ __schema { queryType { name } } }").json()
    assert body["data"] is None and "introspection" in body["errors"][0]["message"].lower()
    # Ordinary queries still work.
    assert _post(client, h, "{ plans { key } }").json() == {"data": {"plans": []}}


def test_graphiql_assets_are_served_locally(api: Api) -> None:
    """The IDE works without internet: every script and stylesheet comes from this server, and
    the files match the integrity hashes the page declares."""
    import base64
    import hashlib
    import re

    page = api.client.get("/graphql", headers={"Accept": "text/html"}).text
    assert "unpkg.com" not in page
    assets = re.findall(r'(?:src|href)="(/graphiql-assets/[^"]+)"\s+integrity="sha384-([^"]+)"', page)
    assert len(assets) == 6, assets
    for path, digest in assets:
        r = api.client.get(path)
        assert r.status_code == 200, path
        assert base64.b64encode(hashlib.sha384(r.content).digest()).decode() == digest, path
    # The page's own script and styles (the key prompt), served beside them.
    own = re.findall(r'(?:src|href)="(/graphiql-assets/meterkit/[^"]+)"', page)
    assert sorted(own) == ["/graphiql-assets/meterkit/ide.css", "/graphiql-assets/meterkit/ide.js"], own
    for path in own:
        assert api.client.get(path).status_code == 200, path
    assert api.client.get("/graphiql-assets/../settings.py").status_code == 404


def test_response_bodies_encode_what_orjson_refuses(api: Api) -> None:
    """GraphQL answers are written with orjson; what it refuses (a lone surrogate echoed from the
    client's own document, an integer past 64 bits) is written by json as before: never a 500."""
    import orjson

    from app.main import _encode

    assert _encode({"a": "\ud800"}) == '{"a":"\\ud800"}'
    assert _encode({"n": 2**70}) == '{"n":1180591620717411303424}'
    assert _encode({"data": {"x": "é"}}) == orjson.dumps({"data": {"x": "é"}})
    # A client's odd input (a backslash-u text) answers as before, from the orjson path.
    r = api.client.post(
        "/graphql",
        content=json.dumps(
            {
                "query": "query($p: String!) { priceQuote(input: {primitive: $p}) { __typename } }",
                "variables": {"p": "\\ud800x"},
            }
        ),
        headers={"Authorization": f"Bearer {api.operator_key}", "Content-Type": "application/json"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {"data": {"priceQuote": {"__typename": "ValidationError"}}}
