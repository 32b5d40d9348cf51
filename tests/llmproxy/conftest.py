"""The LLM proxy's end-to-end setup: fake upstreams (app/devtools/llm_fake.py) on a real uvicorn,
meterkit on another real uvicorn pointed at them, one tenant on a plan whose kit allows llm.*,
and readers of the tenant's books (balance to the micro-credit, events, ledger, llm_call rows)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.core.clock import FrozenClock
from app.devtools.llm_fake import FakeLlm
from app.devtools.llm_fake import create_app as fake_app
from app.main import create_app
from app.settings import Settings
from tests.conftest import Api
from tests.fixtures_catalog import KIT, PLAN, SET_SUB, seed_catalog
from tests.live import BackgroundServer

OPENROUTER_KEY = "sk-or-upstream-secret-1"
OPENAI_KEY = "sk-openai-upstream-secret-2"
ANTHROPIC_KEY = "sk-ant-upstream-secret-3"
CREATE_KEY = """mutation($t: ID) { createApiKey(tenantId: $t) { ... on CreatedApiKey { secret apiKey { id } } } }"""
SET_BUDGET = """mutation($k: ID!, $i: KeyBudgetInput!) { setKeyBudget(apiKeyId: $k, input: $i) { __typename } }"""


@dataclass
class Proxy:
    api: Api
    fake: FakeLlm
    url: str  # meterkit
    upstream: str  # the fake upstreams
    tenant_id: str
    tenant_key: str
    key_id: str
    http: httpx.Client

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.api.db.engine.connect() as c:
            return list(c.execute(text(query), {"t": self.tenant_id, **params}).all())

    def balance(self) -> int:
        """The tenant's balance in micro-credits."""
        return int(self.sql("SELECT balance FROM credit_account WHERE tenant_id = :t")[0][0])

    def settled(self, expected: int, seconds: float = 10.0) -> int:
        """The balance once it is `expected`: a non-streamed call is billed just after its answer is
        sent. Fails if it never gets there."""
        deadline = time.monotonic() + seconds
        while (balance := self.balance()) != expected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert balance == expected, (balance, expected)
        return balance

    def events(self) -> list[Any]:
        return self.sql(
            "SELECT primitive, quantity, credits, reference, idempotency_key, api_key_id FROM usage_event "
            "WHERE tenant_id = :t ORDER BY id"
        )

    def llm_events(self) -> list[Any]:
        return [e for e in self.events() if e.primitive.startswith("llm.")]

    def debits(self) -> list[Any]:
        return self.sql(
            "SELECT action, amount, reference FROM ledger_entry WHERE tenant_id = :t AND kind = 'debit' ORDER BY id"
        )

    def calls(self) -> list[Any]:
        return self.sql("SELECT * FROM llm_call WHERE tenant_id = :t ORDER BY id")

    def spend_to(self, micro: int) -> None:
        """Bring the balance down to `micro` with email.send charges (1 credit each) and one
        llm.passthrough charge for the fraction, through REST /v1/charge."""
        over = self.balance() - micro
        whole, fraction = divmod(over, 1_000_000)
        auth = {"Authorization": f"Bearer {self.tenant_key}"}
        if whole:
            body = {"primitive": "email.send", "quantity": whole, "idempotency_key": f"spend-{micro}-w"}
            assert self.http.post("/v1/charge", json=body, headers=auth).status_code == 200
        if fraction:
            # llm.passthrough: cost x 1.5 / 0.50 = 3 x cost credits, rounded to the micro-credit.
            cost = (Decimal(fraction) / 3 / 1_000_000).quantize(Decimal("1e-12"))
            body = {
                "primitive": "llm.passthrough",
                "idempotency_key": f"spend-{micro}-f",
                "details": {"cost_usd": str(cost)},
            }
            r = self.http.post("/v1/charge", json=body, headers=auth)
            assert r.status_code == 200, r.text
        assert self.balance() == micro

    def set_plan(self, plan: str) -> None:
        self.api(SET_SUB, {"t": self.tenant_id, "i": {"planKey": plan}})


def llm_catalog(api: Api) -> None:
    seed_catalog(api)
    api(KIT, {"i": {"key": "kit_llm", "name": "LLM", "allowedPrimitives": ["llm.*", "email.*"]}})
    api(
        PLAN,
        {"i": {"key": "llm", "name": "LLM", "accountKitId": "kit_llm", "period": "month", "quotas": []}},
    )


@pytest.fixture
def proxy_overrides() -> dict[str, Any]:
    """Settings a test changes: `@pytest.mark.parametrize("proxy_overrides", [{...}])`."""
    return {}


@pytest.fixture(name="proxy")
def proxy_fixture(api: Api, settings: Settings, clock: FrozenClock, proxy_overrides: dict[str, Any]) -> Iterator[Proxy]:
    llm_catalog(api)
    tid = api.create_tenant("Acme")
    api(SET_SUB, {"t": tid, "i": {"planKey": "llm"}})
    created = api(CREATE_KEY, {"t": tid})["createApiKey"]
    fake = FakeLlm()
    with BackgroundServer(fake_app(fake)) as upstream:
        conf = settings.model_copy(
            update={
                "openrouter_base_url": f"{upstream.url}/openrouter/api/v1",
                "openrouter_api_key": OPENROUTER_KEY,
                "openai_base_url": f"{upstream.url}/openai/v1",
                "openai_api_key": OPENAI_KEY,
                "anthropic_base_url": f"{upstream.url}/anthropic",
                "anthropic_api_key": ANTHROPIC_KEY,
                "llm_drain_seconds": 10.0,
                **proxy_overrides,
            }
        )
        app = create_app(conf, engine=api.db.engine, clock=clock)
        with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30, trust_env=False) as http:
            yield Proxy(api, fake, server.url, upstream.url, tid, created["secret"], created["apiKey"]["id"], http)
