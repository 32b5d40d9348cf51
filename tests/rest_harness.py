"""REST tests' setup: the app on a real uvicorn (tests/live.py), a seeded catalog, one tenant
with a key, and a caller that sends either key kind."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.core.clock import FrozenClock
from app.main import create_app
from app.settings import Settings
from tests.conftest import Api
from tests.fixtures_catalog import SET_SUB, seed_catalog
from tests.live import BackgroundServer

MONEY = ("ledger_entry", "usage_event", "usage_counter", "credit_hold", "credit_bucket", "credit_account")


@dataclass
class Rest:
    api: Api  # GraphQL, for setup
    http: httpx.Client
    url: str
    tenant_id: str
    tenant_key: str
    clock: FrozenClock

    @property
    def operator_key(self) -> str:
        return self.api.operator_key

    def headers(self, as_: str = "tenant", tenant: str | None = None) -> dict[str, str]:
        if as_ == "tenant":
            return {"Authorization": f"Bearer {self.tenant_key}"}
        if as_ == "operator":
            return {"Authorization": f"Bearer {self.operator_key}", "X-Tenant-Id": tenant or self.tenant_id}
        if as_ == "operator-alone":
            return {"Authorization": f"Bearer {self.operator_key}"}
        return {}

    def get(self, path: str, as_: str = "tenant", **kw: Any) -> httpx.Response:
        return self.http.get(path, headers={**self.headers(as_), **kw.pop("headers", {})}, **kw)

    def post(self, path: str, body: Any = None, as_: str = "tenant", **kw: Any) -> httpx.Response:
        headers = {**self.headers(as_), **kw.pop("headers", {})}
        if body is not None:
            kw["json"] = body
        return self.http.post(path, headers=headers, **kw)

    def new_tenant(self, name: str = "Other", plan: str = "pro") -> tuple[str, str]:
        tid = self.api.create_tenant(name)
        self.api(SET_SUB, {"t": tid, "i": {"planKey": plan}})
        return tid, self.api.tenant_key(tid)


@pytest.fixture(name="rest")
def rest_fixture(api: Api, settings: Settings, clock: FrozenClock) -> Iterator[Rest]:
    seed_catalog(api)
    tid = api.create_tenant("Acme")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    key = api.tenant_key(tid)
    app = create_app(settings, engine=api.db.engine, clock=clock)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30, trust_env=False) as http:
        yield Rest(api, http, server.url, tid, key, clock)
