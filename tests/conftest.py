"""Test fixtures. Every database test runs on a real SQLite file and, when
METERKIT_TEST_POSTGRES_URL is set, on a real PostgreSQL server too, each test in a
throwaway database cloned from a migrated template and dropped afterwards."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from starlette.testclient import TestClient

from app.core.clock import FrozenClock
from app.core.db import make_engine, normalize_url, unit_of_work
from app.core.migrate import upgrade
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_api_key

PG_URL = os.environ.get("METERKIT_TEST_POSTGRES_URL")
REQUIRE_PG = os.environ.get("METERKIT_REQUIRE_POSTGRES") == "1"
RUN_ID = uuid.uuid4().hex[:8]


def _pg_admin() -> Engine:
    assert PG_URL
    return create_engine(normalize_url(PG_URL), isolation_level="AUTOCOMMIT", pool_size=1)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    if not PG_URL:
        yield None
        return
    try:
        admin = _pg_admin()
        with admin.connect() as c:
            c.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required but unreachable: {exc}")
        yield None
        return
    name = f"mk_tpl_{RUN_ID}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(normalize_url(PG_URL)).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield name
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def _backends() -> list[Any]:
    params: list[Any] = ["sqlite"]
    if PG_URL or REQUIRE_PG:
        params.append(pytest.param("postgres", marks=pytest.mark.postgres))
    return params


def _assert_books_balance(request: pytest.FixtureRequest, engine: Engine) -> None:
    """After every database test, whatever it did: reconcile finds zero drift, every tenant's
    reserved credits equal its open holds, and every usage counter and hourly rollup equals its
    events. Tests that break the books on purpose carry @pytest.mark.drift_expected."""
    if request.node.get_closest_marker("drift_expected"):
        return
    from app.credits.service import reconcile

    with unit_of_work(engine, write=False) as s:
        drifted = reconcile(s).drifted
        conn = s.connection()
        holds = conn.execute(
            text(
                # A hold is held by its tenant's account (own_reserved), its paying organization's, or both.
                "SELECT a.tenant_id, a.reserved, coalesce(sum(h.amount), 0) FROM credit_account a "
                "LEFT JOIN credit_hold h ON h.status = 'open' "
                "AND ((h.tenant_id = a.tenant_id AND h.own_reserved) OR h.payer_id = a.tenant_id) "
                "GROUP BY a.tenant_id, a.reserved HAVING a.reserved <> coalesce(sum(h.amount), 0)"
            )
        ).all()
        counters = conn.execute(
            text(
                "SELECT c.tenant_id, c.primitive, c.used, coalesce(sum(e.quantity), 0) FROM usage_counter c "
                "LEFT JOIN usage_event e ON e.tenant_id = c.tenant_id AND e.primitive = c.primitive "
                "AND e.period_start = c.period_start "
                "GROUP BY c.tenant_id, c.primitive, c.period_start, c.used, c.credits "
                "HAVING c.used <> coalesce(sum(e.quantity), 0) OR c.credits <> coalesce(sum(e.credits), 0)"
            )
        ).all()
        # The hourly rollups hold every event exactly once: totals per tenant, primitive and key.
        rolled = {
            tuple(r[:3]): tuple(int(x) for x in r[3:])
            for r in conn.execute(
                text(
                    "SELECT tenant_id, primitive, api_key_id, sum(quantity), sum(credits), sum(events) "
                    "FROM usage_rollup GROUP BY tenant_id, primitive, api_key_id"
                )
            )
        }
        recorded = {
            tuple(r[:3]): tuple(int(x) for x in r[3:])
            for r in conn.execute(
                text(
                    "SELECT tenant_id, primitive, coalesce(api_key_id, ''), sum(quantity), sum(credits), count(*) "
                    "FROM usage_event GROUP BY tenant_id, primitive, coalesce(api_key_id, '')"
                )
            )
        }
        rollups = sorted(set(rolled.items()) ^ set(recorded.items()))
        # What a budgeted key has held in a period is exactly its open holds pointing there.
        held = conn.execute(
            text(
                "SELECT u.api_key_id, u.primitive, u.held_credits, u.held_quantity, "
                "coalesce(sum(h.amount), 0), coalesce(sum(h.quantity), 0) FROM key_budget_usage u "
                "LEFT JOIN credit_hold h ON h.api_key_id = u.api_key_id AND h.budget_period_start = u.period_start "
                "AND h.status = 'open' AND (u.primitive = '*' OR h.primitive = u.primitive) "
                "GROUP BY u.api_key_id, u.period_start, u.primitive, u.held_credits, u.held_quantity "
                "HAVING u.held_credits <> coalesce(sum(h.amount), 0) OR u.held_quantity <> coalesce(sum(h.quantity), 0)"
            )
        ).all()
    assert drifted == [], f"ledger drift after {request.node.name}: {drifted}"
    assert holds == [], f"reserved != open holds after {request.node.name}: {holds}"
    assert counters == [], f"usage counters != events after {request.node.name}: {counters}"
    assert rollups == [], f"usage rollups != events after {request.node.name}: {rollups}"
    assert held == [], f"key budget held != open holds after {request.node.name}: {held}"


@dataclass
class Database:
    backend: str
    url: str
    engine: Engine


@pytest.fixture(params=_backends())
def db(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        path = tmp_path / "meterkit.db"
        shutil.copy(sqlite_template, path)
        url = f"sqlite:///{path}"
        engine = make_engine(url)
        yield Database("sqlite", url, engine)
        _assert_books_balance(request, engine)
        engine.dispose()
        return
    template = request.getfixturevalue("pg_template")
    if template is None:
        if REQUIRE_PG:
            pytest.fail("METERKIT_REQUIRE_POSTGRES=1 but METERKIT_TEST_POSTGRES_URL is unset or unreachable")
        pytest.skip("PostgreSQL not configured")
    name = f"mk_t_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    url = make_url(normalize_url(PG_URL or "")).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url, pool_size=30, max_overflow=30)
    yield Database("postgres", url, engine)
    _assert_books_balance(request, engine)
    engine.dispose()
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 7, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def settings() -> Settings:
    # Key cache off: statement counts and revocation tests must not depend on timing
    # (tests/tenants/test_auth_cache.py covers the cache itself).
    return Settings(env="test", database_url="sqlite://unused", auth_cache_seconds=0)


class Api:
    """A GraphQL caller over the ASGI app; `key` and `tenant` pick the credential."""

    def __init__(self, client: TestClient, db: Database) -> None:
        self.client = client
        self.db = db
        self.operator_key = ""

    def __call__(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        tenant: str | None = None,
        expect_errors: bool = False,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {key or self.operator_key}"}
        if tenant:
            headers["X-Tenant-Id"] = tenant
        r = self.client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)
        body = r.json()
        if not expect_errors:
            assert r.status_code == 200, body
            assert not body.get("errors"), body["errors"]
            return body["data"]
        return body

    def create_tenant(self, name: str = "Acme", **extra: Any) -> str:
        data = self(
            "mutation($i: CreateTenantInput!) { createTenant(input: $i) { __typename ... on Tenant { id } } }",
            {"i": {"name": name, **extra}},
        )
        assert data["createTenant"]["__typename"] == "Tenant", data
        return str(data["createTenant"]["id"])

    def tenant_key(self, tenant_id: str) -> str:
        return self.tenant_key_as(tenant_id, None)

    def tenant_key_as(self, tenant_id: str, key: str | None) -> str:
        """An end user's key, minted by `key` (default: the platform key)."""
        data = self(
            "mutation($t: ID!) { createApiKey(tenantId: $t) { ... on CreatedApiKey { secret } } }",
            {"t": tenant_id},
            key=key,
        )
        return str(data["createApiKey"]["secret"])


@pytest.fixture
def api(db: Database, settings: Settings, clock: FrozenClock) -> Iterator[Api]:
    app = create_app(settings, engine=db.engine, clock=clock)
    with TestClient(app) as client:
        a = Api(client, db)
        with unit_of_work(db.engine) as s:
            _, raw = create_api_key(s, clock, role="operator", scope=None, name="tests")
        a.operator_key = raw
        yield a


def count_rows(engine: Engine, *tables: str) -> dict[str, int]:
    with engine.connect() as c:
        return {t: int(c.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in tables}


ALL_TABLES = (
    "account_kit",
    "plan",
    "plan_quota",
    "tenant",
    "api_key",
    "subscription",
    "credit_account",
    "credit_bucket",
    "ledger_entry",
    "credit_pack",
    "credit_reversal",
    "price",
    "llm_rate",
    "media_price",
    "pricing_setting",
    "stripe_event",
    "stripe_operation",
)
