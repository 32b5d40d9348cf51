"""The terms' versions (migration 0025) and the process's copy of the terms they validate
(app/metering/terms_cache.py): every write to a term changes a version, on both databases, whoever
writes it (a service or a hand-written statement); a write that is not a term changes none (the
copy is not thrown away for nothing); and a charge with a copy in date skips the terms' joins, and
reads them again when a version moved."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from app.metering import charge_repository, pg_charge, terms_cache
from tests.conftest import Api
from tests.fixtures_catalog import KIT, SET_SUB, seed_catalog
from tests.paths import ROOT
from tests.sql_capture import captured_statements

_spec = importlib.util.spec_from_file_location(
    "terms_version_migration", ROOT / "migrations" / "versions" / "0025_terms_version.py"
)
assert _spec is not None and _spec.loader is not None
migration: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(migration)

NEW_KEY = """mutation($t: ID!) { createApiKey(tenantId: $t) { ... on CreatedApiKey { secret apiKey { id } } } }"""
BUDGET = """mutation($k: ID!, $i: KeyBudgetInput!) { setKeyBudget(apiKeyId: $k, input: $i) { __typename } }"""
CLEAR_BUDGET = """mutation($k: ID!) { clearKeyBudget(apiKeyId: $k) { __typename } }"""
POLICY = """mutation($t: ID, $p: String, $q: [Int!]) {
  setAlertPolicy(tenantId: $t, planKey: $p, quotaPercents: $q) { __typename } }"""


def test_every_column_the_terms_read_is_versioned() -> None:
    """The terms statement's tables and columns, read from its text: each is a column of the
    tenant's or the organization's own that their triggers watch, or a table whose every write
    bumps a version. A term added to the statement without a trigger fails here."""
    sql = charge_repository._TERMS_COLUMNS + " " + charge_repository._TERMS_FROM
    aliases = dict((alias, table) for table, alias in re.findall(r"(?:FROM|JOIN) (\w+) (\w+)", sql))
    watched = {
        "tenant": {c.strip() for c in migration.TENANT_TERMS.split(",")} | {"id"},
        "organization": {c.strip() for c in migration.ORGANIZATION_TERMS.split(",")} | {"id"},
    }
    read = {(aliases[alias], column) for alias, column in re.findall(r"\b(\w+)\.(\w+)\b", sql) if alias in aliases}
    assert ("account_kit", "allowed_primitives") in read and ("tenant", "plan_key") in read  # the parse works
    unversioned = [
        (table, column)
        for table, column in sorted(read)
        if table != "credit_account"  # the locked row itself: read every time, never kept
        and table not in migration.BUMPS
        and column not in watched.get(table, set())
    ]
    assert unversioned == []


def _versions(engine: Engine, tid: str) -> tuple[int, int]:
    with engine.connect() as c:
        row = c.execute(
            text(
                "SELECT t.terms_version, o.terms_version FROM tenant t "
                "JOIN organization o ON o.id = t.organization_id WHERE t.id = :t"
            ),
            {"t": tid},
        ).one()
    return int(row[0]), int(row[1])


def _sql(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as c:
        assert c.execute(text(statement), params).rowcount >= 1, statement


def _charge(client: TestClient, key: str, idem: str, primitive: str = "email.send") -> tuple[int, Any]:
    r = client.post(
        "/v1/charge", json={"primitive": primitive, "idempotency_key": idem}, headers={"Authorization": f"Bearer {key}"}
    )
    return r.status_code, r.json()


def test_each_term_written_moves_a_version_and_nothing_else_does(api: Api) -> None:
    engine = api.db.engine
    seed_catalog(api)
    tid = api.create_tenant("Acme")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    made = api(NEW_KEY, {"t": tid})["createApiKey"]
    assert _charge(api.client, made["secret"], "roll")[0] == 200  # records the billing period
    with engine.connect() as c:
        org = c.execute(text("SELECT organization_id FROM tenant WHERE id = :t"), {"t": tid}).scalar_one()

    def moved(write: Any) -> tuple[bool, bool]:
        before = _versions(engine, tid)
        write()
        after = _versions(engine, tid)
        return after[0] != before[0], after[1] != before[1]

    tenant_only, org_only, neither = (True, False), (False, True), (False, False)
    # Not terms: nothing moves.
    assert moved(lambda: _sql(engine, "UPDATE tenant SET name = 'Renamed' WHERE id = :t", t=tid)) == neither
    assert moved(lambda: _sql(engine, "UPDATE organization SET name = 'Org' WHERE id = :o", o=org)) == neither
    # The tenant's own columns, its subscription, its budget, its policy, its recorded period.
    assert moved(lambda: _sql(engine, "UPDATE tenant SET account_kit_key = 'kit_basic' WHERE id = :t", t=tid)) == (
        tenant_only
    )
    assert moved(lambda: _sql(engine, "UPDATE tenant SET plan_version = plan_version WHERE id = :t", t=tid)) == (
        tenant_only
    )
    assert moved(lambda: _sql(engine, "UPDATE subscription SET status = 'past_due' WHERE tenant_id = :t", t=tid)) == (
        tenant_only
    )
    assert moved(lambda: api(BUDGET, {"k": made["apiKey"]["id"], "i": {"creditLimit": "5"}})) == tenant_only
    assert moved(lambda: _sql(engine, "UPDATE key_budget SET credit_limit = 1 WHERE tenant_id = :t", t=tid)) == (
        tenant_only
    )
    assert moved(lambda: api(CLEAR_BUDGET, {"k": made["apiKey"]["id"]})) == tenant_only
    assert moved(lambda: api(POLICY, {"t": tid, "q": [50]})) == tenant_only
    assert moved(lambda: _sql(engine, "UPDATE billing_period SET end_at = end_at WHERE tenant_id = :t", t=tid)) == (
        tenant_only
    )
    assert moved(lambda: _sql(engine, "DELETE FROM billing_period WHERE tenant_id = :t", t=tid)) == tenant_only
    # The organization's: its own columns, its plans, its kits, a plan's policy.
    assert moved(lambda: _sql(engine, "UPDATE organization SET end_user_credit_cap = 7 WHERE id = :o", o=org)) == (
        org_only
    )
    assert moved(lambda: _sql(engine, "UPDATE plan SET overage = 'refuse' WHERE organization_id = :o", o=org)) == (
        org_only
    )
    assert moved(lambda: api(KIT, {"i": {"key": "kit_new", "name": "New", "allowedPrimitives": ["email.send"]}})) == (
        org_only
    )
    assert moved(
        lambda: _sql(engine, "DELETE FROM account_kit WHERE key = 'kit_new' AND organization_id = :o", o=org)
    ) == (org_only)
    assert moved(lambda: api(POLICY, {"p": "pro", "q": [80]})) == org_only


def _lock_statements(seen: list[tuple[str, Any]]) -> tuple[int, int]:
    """(lock statements that read the terms' joins, lock statements that did not)."""
    locks = [s for s, _ in seen if "FROM credit_account a JOIN tenant t" in s]
    full = [s for s in locks if "account_kit k" in s]
    return len(full), len(locks) - len(full)


def test_a_charge_with_its_terms_in_date_skips_their_joins_and_rereads_them_when_they_moved(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL: the Python path (its function, app/metering/pg_charge.sql, reads the terms itself).
    monkeypatch.setattr(pg_charge, "ENABLED", False)
    engine = api.db.engine
    seed_catalog(api)
    tid = api.create_tenant("Acme")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    key = api.tenant_key(tid)
    terms_cache.forget()
    # The period's first charge records the period (a version moves with it); the next reads the
    # terms with it and keeps them.
    for idem in ("first", "second"):
        with captured_statements(api.db) as seen:
            assert _charge(api.client, key, idem)[0] == 200
        assert _lock_statements(seen) == (1, 0)
    with captured_statements(api.db) as seen:
        status, body = _charge(api.client, key, "third")
    assert status == 200 and body["usage"]["used"] == 3, body
    assert _lock_statements(seen) == (0, 1)  # the copy is in date: the lock reads the versions only

    # The kit loses email.* through a statement no service wrote: the next charge sees the version
    # move, reads the terms again and is refused.
    _sql(
        engine,
        "UPDATE account_kit SET allowed_primitives = :a WHERE key = 'kit_pro'",
        a='["search.*"]',
    )
    with captured_statements(api.db) as seen:
        status, body = _charge(api.client, key, "after-kit")
    assert status == 403 and body["error"]["code"] == "not_entitled", body
    assert _lock_statements(seen) == (1, 1)
    with captured_statements(api.db) as seen:  # and keeps the new terms: refused again from the copy
        status, body = _charge(api.client, key, "after-kit-2")
    assert status == 403 and body["error"]["code"] == "not_entitled", body
    assert _lock_statements(seen) == (0, 1)


@pytest.fixture(autouse=True)
def _fresh_copy() -> Iterator[None]:
    terms_cache.forget()
    yield
    terms_cache.forget()
