"""Migration 0017_organizations: a database from before organizations, with a tenant that holds credits
(a bucket, ledger entries, an open hold), a kit, a plan, a platform key and a tenant key, upgrades on
SQLite and PostgreSQL into one default organization (end-user wallets on, platform credits exempt)
that owns them all; no ledger entry changes; the tenant keeps its balance and is charged as before."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sqlalchemy import create_engine, text

from app.core.auth import TenantScope
from app.core.clock import FrozenClock
from app.core.db import make_engine, normalize_url, unit_of_work
from app.core.migrate import upgrade
from app.metering.commands import charge
from app.metering.types import MeterRequest
from app.organizations.models import DEFAULT_ORG_ID
from tests.core.test_migration_scopes_rollups import T, empty_url  # noqa: F401  (fixture)

BEFORE = "0016_hot_indexes"
AT = "'2026-07-01 00:00:00'"
ROWS = [
    f"INSERT INTO account_kit (key, name, allowed_primitives, limits, allowed_connections, created_at, updated_at) "
    f"VALUES ('kit_old', 'Old', '[\"email.*\"]', '{{}}', '[]', {AT}, {AT})",
    f"INSERT INTO plan (key, name, account_kit_key, period, overage, included_credits, archived, created_at, "
    f"updated_at) VALUES ('old', 'Old', 'kit_old', 'month', 'refuse', 0, false, {AT}, {AT})",
    f"INSERT INTO tenant (id, name, metadata, plan_key, created_at) VALUES ('{T}', 'T', '{{}}', 'old', {AT})",
    f"INSERT INTO credit_account (tenant_id, balance, reserved, updated_at) VALUES ('{T}', 15000000, 2000000, {AT})",
    "INSERT INTO credit_bucket (id, tenant_id, source, granted, remaining, grant_key, created_at) "
    f"VALUES ('bkt_1', '{T}', 'signup', 20000000, 15000000, 'signup', {AT})",
    "INSERT INTO ledger_entry (tenant_id, kind, action, amount, balance_after, created_at) "
    f"VALUES ('{T}', 'grant', 'signup', 20000000, 20000000, {AT})",
    "INSERT INTO ledger_entry (tenant_id, kind, action, amount, balance_after, created_at) "
    f"VALUES ('{T}', 'debit', 'email.send', -5000000, 15000000, {AT})",
    "INSERT INTO credit_hold (id, tenant_id, idempotency_key, request_hash, primitive, quantity, amount, status, "
    f"expires_at, created_at) VALUES ('hold_1', '{T}', 'h', 'x', 'email.send', 1, 2000000, 'open', "
    f"'2099-01-01 00:00:00', {AT})",
    "INSERT INTO api_key (id, kind, tenant_id, name, key_hash, prefix, created_at) "
    f"VALUES ('key_op', 'operator', NULL, 'op', 'h1', 'mk_op_x', {AT})",
    "INSERT INTO api_key (id, kind, tenant_id, name, key_hash, prefix, created_at) "
    f"VALUES ('key_tn', 'tenant', '{T}', 'tn', 'h2', 'mk_tn_x', {AT})",
]


def test_an_existing_database_becomes_one_default_organization(empty_url: str) -> None:  # noqa: F811
    upgrade(empty_url, BEFORE, lock=False)
    engine = create_engine(normalize_url(empty_url))
    with engine.begin() as c:
        for sql in ROWS:
            c.execute(text(sql))
        ledger_before = c.execute(text("SELECT id, tenant_id, kind, amount, balance_after FROM ledger_entry")).all()
    started = time.perf_counter()
    upgrade(empty_url, "head", lock=False)
    print(f"0017 upgrade of a small database: {time.perf_counter() - started:.3f}s")
    with engine.begin() as c:
        org = c.execute(text("SELECT id, end_user_wallets, platform_credits_exempt FROM organization")).all()
        assert [tuple(r) for r in org] == [(DEFAULT_ORG_ID, True, True)]
        for table in ("account_kit", "plan", "tenant"):
            owners = c.execute(text(f"SELECT DISTINCT organization_id FROM {table}")).scalars().all()
            assert owners == [DEFAULT_ORG_ID], table
        keys: dict[str, str | None] = dict(c.execute(text("SELECT id, organization_id FROM api_key")).all())
        assert keys == {"key_op": None, "key_tn": DEFAULT_ORG_ID}  # platform keys belong to no organization
        assert c.execute(text("SELECT kind FROM tenant")).scalar_one() == "end_user"
        assert c.execute(text("SELECT id, tenant_id, kind, amount, balance_after FROM ledger_entry")).all() == (
            ledger_before
        )
        assert tuple(c.execute(text("SELECT balance, reserved FROM credit_account")).one()) == (15_000_000, 2_000_000)
    engine.dispose()
    # Charged as before: the tenant's own wallet pays, nothing else moves.
    app_engine = make_engine(empty_url)
    try:
        clock = FrozenClock(datetime(2026, 7, 2, tzinfo=UTC))
        with unit_of_work(app_engine) as s:
            s.connection().execute(
                text(
                    "INSERT INTO price (primitive, credits, updated_at) VALUES ('email.send', 1000000, :n) "
                    "ON CONFLICT DO NOTHING"
                ),
                {"n": clock.now()},
            )
        done = charge(app_engine, clock, TenantScope(T), MeterRequest("email.send", "after-upgrade"), negative_buffer=0)
        assert done.credits_used == 1_000_000 and done.credits_remaining == 15_000_000 - 1_000_000 - 2_000_000
        with app_engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM ledger_entry")).scalar_one() == 3
            assert (
                c.execute(
                    text("SELECT count(*) FROM ledger_entry WHERE tenant_id = :o"), {"o": DEFAULT_ORG_ID}
                ).scalar_one()
                == 0
            )
    finally:
        app_engine.dispose()


def test_the_migration_goes_down_and_up_again(empty_url: str) -> None:  # noqa: F811
    from alembic import command

    from app.core.migrate import alembic_config

    upgrade(empty_url, "head", lock=False)
    command.downgrade(alembic_config(empty_url), BEFORE)
    engine = create_engine(normalize_url(empty_url))
    with engine.connect() as c:
        assert "organization" not in engine.dialect.get_table_names(c)
        assert "organization_id" not in {col["name"] for col in engine.dialect.get_columns(c, "tenant")}
    engine.dispose()
    upgrade(empty_url, "head", lock=False)
    engine = create_engine(normalize_url(empty_url))
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM organization")).scalar_one() == 1
    engine.dispose()
