"""Keys with scopes (read / meter / manage) and an optional expiry, and CORS for browsers.

The walk covers every root field of the built schema: a read-only key (tenant or operator)
is refused every field whose catalog rule needs more than `read`, and writes nothing."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import inspect

from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.graphql.permissions import CATALOG
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.conftest import Api, Database, count_rows
from tests.fixtures_catalog import SET_SUB, seed_catalog
from tests.live import BackgroundServer
from tests.metering.test_metering_basic import CHARGE
from tests.paths import ROOT
from tests.schema_walk import FieldCall, field_call, graphql_schema, root_fields

SCHEMA = graphql_schema()
CALLS = [field_call(SCHEMA, op, name) for op, name in root_fields(SCHEMA)]
NOT_READ = [c for c in CALLS if CATALOG[c.coordinate].scope != "read"]

MINT = """mutation($t: ID, $s: [ApiKeyScope!], $e: DateTime) {
  createApiKey(tenantId: $t, scopes: $s, expiresAt: $e) { __typename
    ... on CreatedApiKey { secret apiKey { id scopes expiresAt } }
    ... on ValidationError { field message } } }"""


def _mint(api: Api, tid: str | None, scopes: list[str] | None = None, expires: str | None = None, **kw: Any) -> Any:
    return api(MINT, {"t": tid, "s": scopes, "e": expires}, **kw)["createApiKey"]


def _tables(api: Api) -> dict[str, int]:
    names = [t for t in inspect(api.db.engine).get_table_names() if t != "alembic_version"]
    return count_rows(api.db.engine, *names)


@pytest.fixture
def tenant(api: Api) -> dict[str, str]:
    seed_catalog(api)
    tid = api.create_tenant("Acme")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    read_only = _mint(api, tid, ["READ"])
    assert read_only["apiKey"]["scopes"] == ["READ"]
    return {"id": tid, "full": api.tenant_key(tid), "read": read_only["secret"]}


def test_tenant_keys_default_to_all_three_scopes(api: Api, tenant: dict[str, str]) -> None:
    made = _mint(api, tenant["id"])
    assert made["apiKey"]["scopes"] == ["READ", "METER", "MANAGE"] and made["apiKey"]["expiresAt"] is None


def test_the_walk_has_writes_to_refuse() -> None:
    names = {c.coordinate for c in NOT_READ}
    assert {"Mutation.charge", "Mutation.createApiKey", "Mutation.purchaseCreditPack", "Query.check"} <= names
    assert all(c.operation == "Mutation" or c.name == "check" for c in NOT_READ)
    assert all(CATALOG[c.coordinate].scope != "read" for c in CALLS if c.operation == "Mutation")


@pytest.mark.parametrize("call", NOT_READ, ids=lambda c: c.coordinate)
def test_a_read_only_key_is_refused_every_write(
    api: Api, tenant: dict[str, str], call: FieldCall, clock: FrozenClock
) -> None:
    with unit_of_work(api.db.engine) as s:
        _, op_read = create_api_key(s, clock, role="operator", scope=None, name="ro", scopes=["read"])
    variables = {**call.variables, **{arg: tenant["id"] for arg in call.id_args}}
    before = _tables(api)
    for key, header in ((tenant["read"], None), (op_read, tenant["id"])):
        h = {"Authorization": f"Bearer {key}"} | ({"X-Tenant-Id": header} if header else {})
        r = api.client.post("/graphql", json={"query": call.document, "variables": variables}, headers=h)
        body = r.json()
        assert r.status_code == 200 and body["data"] is None, (call.coordinate, body)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body
        message = body["errors"][0]["message"]
        # A key is refused a field of another role first (a tenant key an operator field, an operator
        # key an organization's own, e.g. connectStripe); every other refusal names the scope.
        by_role = message.startswith(f"not allowed: {call.coordinate} for a")
        assert call.coordinate in message and ("scope" in message or "tenant key" in message or by_role), message
    assert _tables(api) == before


def test_a_read_only_key_reads(api: Api, tenant: dict[str, str]) -> None:
    api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "c1"}}, key=tenant["full"])
    data = api(
        "{ viewer { id usage { quotas { primitive used } } } status { credits { balance } } plans { key } }",
        key=tenant["read"],
    )
    assert data["viewer"]["id"] == tenant["id"]
    assert {"primitive": "email.send", "used": 1} in data["viewer"]["usage"]["quotas"]


def test_a_key_cannot_grant_scopes_it_lacks(api: Api, tenant: dict[str, str]) -> None:
    meter_manage = _mint(api, tenant["id"], ["METER", "MANAGE"])["secret"]
    refused = _mint(api, None, ["READ"], key=meter_manage)
    assert refused["__typename"] == "ValidationError" and refused["field"] == "scopes"
    assert "read" in refused["message"]
    # Without scopes, a minted key gets its maker's scopes, not all three.
    assert _mint(api, None, key=meter_manage)["apiKey"]["scopes"] == ["METER", "MANAGE"]
    empty = _mint(api, tenant["id"], [])
    assert empty["__typename"] == "ValidationError" and empty["field"] == "scopes", empty


def test_expiring_keys(api: Api, tenant: dict[str, str], clock: FrozenClock) -> None:
    now = clock.now()
    past = _mint(api, tenant["id"], expires=(now - timedelta(seconds=1)).isoformat())
    assert past["__typename"] == "ValidationError" and past["field"] == "expiresAt"
    made = _mint(api, tenant["id"], expires=(now + timedelta(hours=1)).isoformat())
    assert made["apiKey"]["expiresAt"] == (now + timedelta(hours=1)).isoformat()
    key = made["secret"]
    # A key minted by an expiring key expires with it, and cannot outlive it.
    child = _mint(api, None, key=key)
    assert child["apiKey"]["expiresAt"] == made["apiKey"]["expiresAt"]
    later = _mint(api, None, expires=(now + timedelta(hours=2)).isoformat(), key=key)
    assert later["__typename"] == "ValidationError" and later["field"] == "expiresAt"
    assert api("{ viewer { id } }", key=key)["viewer"]["id"] == tenant["id"]
    clock.advance(seconds=3600)
    for secret in (key, child["secret"]):
        r = api.client.post(
            "/graphql", json={"query": "{ viewer { id } }"}, headers={"Authorization": f"Bearer {secret}"}
        )
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    assert api("{ viewer { id } }", key=tenant["full"])["viewer"]["id"] == tenant["id"]


def test_an_expired_key_is_refused_even_from_the_key_cache(db: Database, clock: FrozenClock) -> None:
    settings = Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=3600)
    with unit_of_work(db.engine) as s:
        _, op_key = create_api_key(
            s, clock, role="operator", scope=None, name="op", expires_at=clock.now() + timedelta(minutes=5)
        )
    app = create_app(settings, engine=db.engine, clock=clock)
    from starlette.testclient import TestClient

    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {op_key}"}
        ok = client.post("/graphql", json={"query": "{ plans { key } }"}, headers=headers)
        assert ok.status_code == 200 and ok.json()["data"] == {"plans": []}
        clock.advance(seconds=300)
        assert client.post("/graphql", json={"query": "{ plans { key } }"}, headers=headers).status_code == 401


def test_rest_charge_needs_the_meter_scope(api: Api, tenant: dict[str, str]) -> None:
    body = {"primitive": "email.send", "idempotency_key": "r1"}
    before = count_rows(api.db.engine, "usage_event", "ledger_entry")
    r = api.client.post("/v1/charge", json=body, headers={"Authorization": f"Bearer {tenant['read']}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden" and r.json()["error"]["needed"] == "meter"
    assert count_rows(api.db.engine, "usage_event", "ledger_entry") == before
    ok = api.client.post("/v1/charge", json=body, headers={"Authorization": f"Bearer {tenant['full']}"})
    assert ok.status_code == 200, ok.text


# --- CORS, over a real uvicorn ---------------------------------------------------------------

ORIGIN = "https://dash.example.com"


def _preflight(base: str, origin: str) -> httpx.Response:
    return httpx.options(
        f"{base}/graphql",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-tenant-id",
        },
    )


def test_cors_preflight_and_request_from_an_allowed_origin(db: Database, clock: FrozenClock) -> None:
    settings = Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=0, cors_origins=[ORIGIN])
    with unit_of_work(db.engine) as s:
        _, key = create_api_key(s, clock, role="operator", scope=None, name="op", scopes=["read"])
    with BackgroundServer(create_app(settings, engine=db.engine, clock=clock)) as server:
        pre = _preflight(server.url, ORIGIN)
        assert pre.status_code == 200, pre.text
        assert pre.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in pre.headers["access-control-allow-methods"]
        allowed = pre.headers["access-control-allow-headers"].lower()
        assert {"authorization", "content-type", "x-tenant-id"} <= {h.strip() for h in allowed.split(",")}
        r = httpx.post(
            f"{server.url}/graphql",
            json={"query": "{ plans { key } }"},
            headers={"Origin": ORIGIN, "Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200 and r.json() == {"data": {"plans": []}}
        assert r.headers["access-control-allow-origin"] == ORIGIN
        # Another origin: the preflight is refused and no allow-origin header is sent.
        other = _preflight(server.url, "https://evil.example.com")
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_no_cors_by_default(db: Database, clock: FrozenClock) -> None:
    assert Settings(env="test").cors_origins == []
    settings = Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=0)
    with BackgroundServer(create_app(settings, engine=db.engine, clock=clock)) as server:
        pre = _preflight(server.url, ORIGIN)
        assert pre.status_code == 405 and "access-control-allow-origin" not in pre.headers


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERKIT_CORS_ORIGINS", "https://a.example, http://localhost:5173/")
    assert Settings().cors_origins == ["https://a.example", "http://localhost:5173"]


def _docs_example(page: str, section: str) -> str:
    text = (ROOT / "docs" / page).read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```graphql\n(.*?)```", body, re.S)
    return block


def test_the_docs_examples_run_as_written(api: Api, tenant: dict[str, str], clock: FrozenClock) -> None:
    made = api(_docs_example("tenants-and-keys.md", "Keys and scopes"), key=tenant["full"])["createApiKey"]
    assert made["apiKey"]["scopes"] == ["READ"] and made["apiKey"]["expiresAt"] == "2026-12-31T00:00:00+00:00"
    clock.advance(days=(datetime(2026, 11, 10, 12, tzinfo=UTC) - clock.now()).days)
    api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": "nov", "quantity": 3}}, key=tenant["full"])
    points = api(_docs_example("graphql.md", "Dashboards"), key=made["secret"])["usageSeries"]
    assert len(points) == 30 and {p["primitive"] for p in points} == {"email.send"}
    assert [(p["start"][:10], p["quantity"], p["credits"]) for p in points if p["quantity"]] == [("2026-11-10", 3, "3")]
