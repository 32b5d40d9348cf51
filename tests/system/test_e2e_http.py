"""End to end over real HTTP: uvicorn in a subprocess on a free loopback port, on a migrated
SQLite file and on PostgreSQL, driven with httpx using operator and tenant keys. Also the
first start of `meterkit serve` (bootstrap.prepare): one printed key, one demo catalog."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.bootstrap import DEMO_KITS, DEMO_PLANS, prepare
from app.core.db import make_engine
from app.core.migrate import upgrade
from app.settings import Settings
from tests.conftest import Database, count_rows
from tests.live import free_port, wait_healthy
from tests.paths import ROOT

PYTHON = sys.executable


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERKIT_")}
    env.update({"METERKIT_DATABASE_URL": url, "METERKIT_ENV": "development", "PYTHONUNBUFFERED": "1", **extra})
    return env


@contextmanager
def _server(cmd: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(proc, base, 60, log.read_text)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Client:
    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=15)

    def gql(self, key: str | None, query: str, variables: dict[str, Any] | None = None, **headers: str) -> Any:
        h = dict(headers)
        if key:
            h["Authorization"] = f"Bearer {key}"
        return self.http.post("/graphql", json={"query": query, "variables": variables or {}}, headers=h)


def _migrated_url(db: Database, tmp_path: Path) -> str:
    if db.backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'e2e.db'}"
        upgrade(url)
        return url
    return db.url  # a clone of the migrated template


def _drive(c: Client, op_key: str) -> None:
    kit = c.gql(
        op_key,
        """mutation { upsertAccountKit(input: {key: "kit_pro", name: "Pro",
          allowedPrimitives: ["email.*", "search.web"], allowedConnections: ["gmail"],
          limits: [{primitive: "email.send", maxQuantityPerCall: 100, callsPerMinute: 600}]})
          { __typename ... on AccountKit { key allowedPrimitives } } }""",
    )
    assert kit.status_code == 200
    assert kit.json()["data"]["upsertAccountKit"] == {
        "__typename": "AccountKit",
        "key": "kit_pro",
        "allowedPrimitives": ["email.*", "search.web"],
    }
    plan = c.gql(
        op_key,
        """mutation { upsertPlan(input: {key: "pro", name: "Pro", stripePriceId: "price_e2e", accountKitId: "kit_pro",
          period: "month", quotas: [{primitive: "email.send", quota: 1000}, {primitive: "search.web", quota: 5000}]})
          { __typename ... on Plan { key quotas { primitive quota } } } }""",
    ).json()["data"]["upsertPlan"]
    assert plan["__typename"] == "Plan" and len(plan["quotas"]) == 2
    tenant = c.gql(
        op_key, 'mutation { createTenant(input: {name: "Acme", externalId: "acme"}) { ... on Tenant { id } } }'
    ).json()["data"]["createTenant"]
    tid = tenant["id"]
    created = c.gql(
        op_key,
        'mutation($t: ID!) { createApiKey(tenantId: $t, name: "agent") '
        "{ ... on CreatedApiKey { secret apiKey { id } } } }",
        {"t": tid},
    ).json()["data"]["createApiKey"]
    tenant_key = created["secret"]
    # The server runs on the wall clock: a period end a year out, at midnight UTC.
    end = (datetime.now(UTC) + timedelta(days=365)).replace(hour=0, minute=0, second=0, microsecond=0)
    sub = c.gql(
        op_key,
        """mutation($t: ID!, $end: DateTime!) { setSubscription(tenantId: $t, input: {planKey: "pro", status: active,
          stripeCustomerId: "cus_e2e", stripeSubscriptionId: "sub_e2e", currentPeriodEnd: $end})
          { __typename ... on SubscriptionChanged { tenant { accountKit { key } } } } }""",
        {"t": tid, "end": end.isoformat()},
    ).json()["data"]["setSubscription"]
    assert sub == {"__typename": "SubscriptionChanged", "tenant": {"accountKit": {"key": "kit_pro"}}}

    viewer = c.gql(
        tenant_key, "{ viewer { id name plan { key } accountKit { key } subscription { status currentPeriodEnd } } }"
    )
    assert viewer.status_code == 200
    assert viewer.json() == {
        "data": {
            "viewer": {
                "id": tid,
                "name": "Acme",
                "plan": {"key": "pro"},
                "accountKit": {"key": "kit_pro"},
                "subscription": {"status": "active", "currentPeriodEnd": end.isoformat()},
            }
        }
    }
    # The operator acting for the tenant (X-Tenant-Id, the SDK's for_user) sees the same viewer.
    as_op = c.gql(op_key, "{ viewer { id } }", **{"X-Tenant-Id": tid}).json()
    assert as_op == {"data": {"viewer": {"id": tid}}}

    # The tenant key is refused on the control plane, and nothing is created.
    refused = c.gql(tenant_key, 'mutation { createTenant(input: {name: "Mallory"}) { __typename } }').json()
    assert refused["data"] is None and refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    refused = c.gql(tenant_key, "{ tenants { nodes { id } } }").json()
    assert refused["data"] is None and refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    listed = c.gql(op_key, "{ tenants(first: 50) { nodes { name } } }").json()["data"]["tenants"]["nodes"]
    assert listed == [{"name": "Acme"}]

    # No key, a wrong key, a revoked key.
    no_key = c.gql(None, "{ viewer { id } }")
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "unauthenticated"
    assert c.gql("mk_tn_wrong", "{ viewer { id } }").status_code == 401
    revoked = c.gql(
        op_key, "mutation($id: ID!) { revokeApiKey(id: $id) { __typename } }", {"id": created["apiKey"]["id"]}
    ).json()
    assert revoked["data"]["revokeApiKey"]["__typename"] == "ApiKey"
    assert c.gql(tenant_key, "{ viewer { id } }").status_code == 401


def test_uvicorn_end_to_end(db: Database, tmp_path: Path) -> None:
    url = _migrated_url(db, tmp_path)
    op_key = "mk_op_" + secrets.token_urlsafe(32)
    port = free_port()
    cmd = [PYTHON, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port)]
    with _server(cmd, _env(url, METERKIT_OPERATOR_KEY=op_key), port, tmp_path / "uvicorn.log") as base:
        c = Client(base)
        assert c.http.get("/healthz").json() == {"status": "ok"}
        ide = c.http.get("/graphql", headers={"Accept": "text/html"})
        assert ide.status_code == 200 and "graphiql" in ide.text.lower()
        _drive(c, op_key)
    # The configured key was stored hashed, once.
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT name, key_hash FROM api_key WHERE kind = 'operator'")).all()
        assert [r.name for r in rows] == ["configured"]
        assert op_key not in repr(rows)
    finally:
        engine.dispose()


def test_meterkit_serve_prints_a_key_once_and_serves(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'serve.db'}"  # not migrated: serve migrates
    cmd = [str(Path(PYTHON).with_name("meterkit")), "serve", "--host", "127.0.0.1"]
    port = free_port()
    log = tmp_path / "serve.log"
    with _server([*cmd, "--port", str(port)], _env(url), port, log) as base:
        lines = log.read_text().splitlines()
        keys = [ln.strip() for ln in lines if ln.strip().startswith("mk_op_")]
        assert len(keys) == 1, lines
        c = Client(base)
        plans = c.gql(keys[0], "{ plans { key accountKitId } }").json()["data"]["plans"]
        assert plans == [{"key": "free", "accountKitId": "kit_free"}, {"key": "pro", "accountKitId": "kit_pro"}]
    # Second start: no new key is printed, and the first one still works.
    port = free_port()
    log2 = tmp_path / "serve2.log"
    with _server([*cmd, "--port", str(port)], _env(url), port, log2) as base:
        assert "mk_op_" not in log2.read_text()
        assert Client(base).gql(keys[0], "{ plans { key } }").status_code == 200


def test_prepare_first_start_is_once(db: Database, tmp_path: Path) -> None:
    url = _migrated_url(db, tmp_path)
    settings = Settings(env="development", database_url=url)
    first = prepare(settings)
    assert first is not None and first.startswith("mk_op_")
    tables = ("account_kit", "plan", "plan_quota", "api_key")
    after_first = count_rows(db.engine if db.backend == "postgres" else make_engine(url), *tables)
    assert after_first["account_kit"] == len(DEMO_KITS) and after_first["plan"] == len(DEMO_PLANS)
    assert after_first["api_key"] == 1

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            # The operator edits a demo plan; a restart must not undo it.
            conn.execute(text("UPDATE plan SET name = 'Pro (edited)' WHERE key = 'pro'"))
        assert prepare(settings) is None
        assert count_rows(engine, *tables) == after_first
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM plan WHERE key = 'pro'")).scalar() == "Pro (edited)"
            kits = {r[0]: r[1] for r in conn.execute(text("SELECT key, account_kit_key FROM plan"))}
        assert kits == {"free": "kit_free", "pro": "kit_pro"}

        # A configured key is stored (hashed) once and never printed.
        configured = "mk_op_" + secrets.token_urlsafe(32)
        with_key = Settings(env="development", database_url=url, operator_key=configured)
        assert prepare(with_key) is None and prepare(with_key) is None
        assert count_rows(engine, "api_key") == {"api_key": 2}
        # --no-demo loads nothing on a fresh database but still makes a key.
        fresh = f"sqlite:///{tmp_path / 'nodemo.db'}"
        assert prepare(Settings(database_url=fresh), demo=False) is not None
        fresh_engine = make_engine(fresh)
        assert count_rows(fresh_engine, "plan", "account_kit") == {"plan": 0, "account_kit": 0}
        fresh_engine.dispose()
    finally:
        engine.dispose()


def test_healthz_reports_an_unreachable_database() -> None:
    from starlette.testclient import TestClient

    from app.main import create_app

    settings = Settings(env="test", database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    engine = make_engine(settings.database_url, connect_args={"connect_timeout": 2})
    with TestClient(create_app(settings, engine=engine)) as client:
        r = client.get("/healthz")
    assert r.status_code == 503 and r.json() == {"status": "unavailable"}


@pytest.mark.parametrize("path", ["/healthz"])
def test_healthz_is_get_only(api: Any, path: str) -> None:
    assert api.client.get(path).status_code == 200
    assert api.client.post(path).status_code == 405
