"""The cache of verified keys: a hit costs no SQL; revoking forgets the key at once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from starlette.testclient import TestClient

from app.core.clock import FrozenClock
from app.main import create_app
from app.settings import Settings
from tests.conftest import Api, Database


def _count(engine: Any) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_cached_key_costs_no_statement_and_revocation_is_immediate(api: Api, db: Database, clock: FrozenClock) -> None:
    tid = api.create_tenant("Cache")
    raw = api.tenant_key(tid)
    app = create_app(Settings(env="test", database_url=db.url, auth_cache_seconds=60), engine=db.engine, clock=clock)
    with TestClient(app) as client:

        def viewer(key: str, tenant: str | None = None) -> Any:
            headers = {"Authorization": f"Bearer {key}"} | ({"X-Tenant-Id": tenant} if tenant else {})
            return client.post("/graphql", json={"query": "{ viewer { id } }"}, headers=headers)

        assert viewer(raw).json()["data"]["viewer"]["id"] == tid  # a miss: looked up, then remembered
        seen = _count(db.engine)
        assert viewer(raw).status_code == 200
        assert not any("api_key" in s for s in seen), seen  # a hit: no key lookup
        # An operator acting for a tenant: the tenant's existence is remembered too.
        assert viewer(api.operator_key, tid).status_code == 200
        seen.clear()
        assert viewer(api.operator_key, tid).json()["data"]["viewer"]["id"] == tid
        assert not any("api_key" in s for s in seen), seen
        assert sum("FROM tenant" in s for s in seen) == 1, seen  # viewer's own read; no existence check
        # Revoke through this process: the very next request is refused.
        key_id = client.post(
            "/graphql", json={"query": "{ viewer { id } }"}, headers={"Authorization": f"Bearer {raw}"}
        ) and _key_id(db, raw)
        r = client.post(
            "/graphql",
            headers={"Authorization": f"Bearer {api.operator_key}"},
            json={"query": "mutation($id: ID!) { revokeApiKey(id: $id) { __typename } }", "variables": {"id": key_id}},
        )
        assert r.json()["data"]["revokeApiKey"]["__typename"] == "ApiKey"
        assert viewer(raw).status_code == 401


def _key_id(db: Database, raw: str) -> str:
    from sqlalchemy import text

    from app.core.auth import hash_key

    with db.engine.connect() as c:
        return str(c.execute(text("SELECT id FROM api_key WHERE key_hash = :h"), {"h": hash_key(raw)}).scalar_one())
