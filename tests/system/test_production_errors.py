"""Issue 12, point 4: with METERKIT_ENV=production an error message names nothing the caller
did not send: no field, argument, type, input field or enum value suggestions, introspection
off. Without a key nothing is parsed at all (401). In development the same mistakes do get
suggestions (the control that shows these documents would reveal them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.core.clock import FrozenClock
from app.http.edge import NO_KEY
from app.main import create_app
from app.settings import Settings
from tests.conftest import Api
from tests.error_shape import without_request_id

# (document, variables, the right spelling a suggestion would reveal)
MISTAKES: dict[str, tuple[str, dict[str, Any] | None, str]] = {
    "root field": ("{ tenantz }", None, "'tenants'"),
    "nested field": ("{ plans { kee } }", None, "'key'"),
    "argument": ('{ tenant(idd: "ten_0") { id } }', None, "'id'"),
    "type in a fragment": ("{ ...F } fragment F on Querz { __typename }", None, "'Query'"),
    "variable type": ("query($a: Strin) { __typename }", None, "'String'"),
    "enum literal": (
        'mutation { setSubscription(tenantId: "ten_0", input: {planKey: "p", status: activ}) { __typename } }',
        None,
        "'active'",
    ),
    "input field literal": (
        'mutation { charge(input: {primitive: "email.send", idempotencyKey: "k", referenc: "r"}) { __typename } }',
        None,
        "'reference'",
    ),
    "input field variable": (
        "mutation($i: MeterInput!) { charge(input: $i) { __typename } }",
        {"i": {"primitive": "email.send", "idempotencyKey": "k", "referenc": "r"}},
        "'reference'",
    ),
    "leaf without selection": ("{ plans }", None, "{ ... }"),
}
# Coerced at execution (variables), which the permission guard stops first for a tenant key.
OPERATOR_ONLY = {
    "enum variable": (
        'mutation($s: SubscriptionStatus!) { setSubscription(tenantId: "ten_0", input: {planKey: "p", status: $s})'
        " { __typename } }",
        {"s": "activ"},
        "'active'",
    ),
}


@pytest.fixture
def keys(api: Api) -> dict[str, str]:
    tenant = api.create_tenant()
    return {"tenant": api.tenant_key(tenant), "operator": api.operator_key}


@pytest.fixture
def production(api: Api, clock: FrozenClock) -> Iterator[TestClient]:
    app = create_app(Settings(env="production", auth_cache_seconds=0), engine=api.db.engine, clock=clock)
    with TestClient(app) as client:
        yield client


def _post(client: TestClient, doc: str, variables: dict[str, Any] | None, key: str | None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/graphql", json={"query": doc, "variables": variables or {}}, headers=headers)


@pytest.mark.parametrize("mistake", [*MISTAKES, *OPERATOR_ONLY])
def test_production_errors_suggest_nothing(
    api: Api, production: TestClient, keys: dict[str, str], mistake: str
) -> None:
    doc, variables, hidden = {**MISTAKES, **OPERATOR_ONLY}[mistake]
    who = ["operator"] if mistake in OPERATOR_ONLY else ["tenant", "operator"]
    for kind in who:
        r = _post(production, doc, variables, keys[kind])
        body = r.json()
        assert body["errors"], body
        assert "Did you mean" not in r.text and hidden not in r.text, (kind, body)
    # No key: refused before the document is even parsed.
    r = _post(production, doc, variables, None)
    assert r.status_code == 401 and without_request_id(r.json()["error"]) == {
        "code": "unauthenticated",
        "message": NO_KEY,
    }


@pytest.mark.parametrize("mistake", [*MISTAKES, *OPERATOR_ONLY])
def test_development_still_suggests(api: Api, keys: dict[str, str], mistake: str) -> None:
    doc, variables, hidden = {**MISTAKES, **OPERATOR_ONLY}[mistake]
    r = _post(api.client, doc, variables, keys["operator"])
    assert "Did you mean" in r.text and hidden in r.text, r.json()


def test_production_introspection_is_off_for_every_key(production: TestClient, keys: dict[str, str]) -> None:
    for key in (keys["tenant"], keys["operator"]):
        for doc in ("{ __schema { types { name } } }", '{ __type(name: "Tenant") { fields { name } } }'):
            body = _post(production, doc, None, key).json()
            assert body.get("data") is None and body["errors"], body
            assert "TenantScope" not in str(body) and "fields" not in str(body.get("data"))
    r = _post(production, "{ __schema { types { name } } }", None, None)
    assert r.status_code == 401
