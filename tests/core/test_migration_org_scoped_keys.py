"""Migration 0019_org_scoped_keys on SQLite and PostgreSQL: a database from before organizations, with a
kit, a plan with a quota and a Stripe price, a subscribed tenant with an external id and a Stripe
customer, a plan's and a tenant's alert policy, a webhook endpoint, usage events and ledger entries,
upgrades to keys per organization with every row kept and every reference intact; a second
organization may then use the same kit and plan keys, Stripe price, external id and customer id, while
a plan naming another organization's kit is refused by the database. Down to 0017 and up again keeps
the rows too (the timing on 1M events is bench/migrate_1m.py's)."""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from app.core.db import make_engine, normalize_url
from app.core.migrate import alembic_config, upgrade
from app.organizations.models import DEFAULT_ORG_ID
from tests.core.test_migration_organizations import AT, BEFORE, ROWS
from tests.core.test_migration_scopes_rollups import T, empty_url  # noqa: F401  (fixture)

MORE = [
    "INSERT INTO plan_quota (plan_key, primitive, quota) VALUES ('old', 'email.send', 100)",
    "UPDATE plan SET stripe_price_id = 'price_old'",
    "UPDATE tenant SET external_id = 'user-1', stripe_customer_id = 'cus_1'",
    f"INSERT INTO subscription (tenant_id, plan_key, status, updated_at) VALUES ('{T}', 'old', 'active', {AT})",
    f"INSERT INTO alert_policy (plan_key, tenant_id, low_balance, updated_at) VALUES ('old', NULL, 5, {AT})",
    f"INSERT INTO alert_policy (plan_key, tenant_id, low_balance, updated_at) VALUES (NULL, '{T}', 7, {AT})",
    "INSERT INTO webhook_endpoint (id, tenant_id, url, secret, event_types, active, consecutive_failures, "
    f"created_at, updated_at) VALUES ('whe_1', '{T}', 'https://x.example.com', 's', '[]', true, 0, {AT}, {AT})",
    "INSERT INTO webhook_endpoint (id, tenant_id, url, secret, event_types, active, consecutive_failures, "
    f"created_at, updated_at) VALUES ('whe_2', NULL, 'https://y.example.com', 's', '[]', true, 0, {AT}, {AT})",
    "INSERT INTO usage_event (tenant_id, idempotency_key, request_hash, kind, primitive, quantity, credits, "
    f"period_start, result, created_at) VALUES ('{T}', 'e1', 'h', 'charge', 'email.send', 1, 0, {AT}, '{{}}', {AT})",
]
OTHER = "org_" + "b" * 32
OTHERS = [
    f"INSERT INTO organization (id, name, end_user_wallets, platform_credits_exempt, created_at) "
    f"VALUES ('{OTHER}', 'B', false, false, {AT})",
    "INSERT INTO account_kit (organization_id, key, name, allowed_primitives, limits, allowed_connections, "
    f"created_at, updated_at) VALUES ('{OTHER}', 'kit_old', 'B', '[]', '{{}}', '[]', {AT}, {AT})",
    "INSERT INTO plan (organization_id, key, name, stripe_price_id, account_kit_key, period, overage, "
    f"included_credits, archived, created_at, updated_at) VALUES ('{OTHER}', 'old', 'B', 'price_old', 'kit_old', "
    f"'month', 'refuse', 0, false, {AT}, {AT})",
    f"INSERT INTO plan_quota (organization_id, plan_key, primitive, quota) VALUES ('{OTHER}', 'old', 'email.send', 9)",
    "INSERT INTO tenant (id, name, external_id, metadata, plan_key, stripe_customer_id, created_at, "
    f"organization_id, kind) VALUES ('ten_{'b' * 32}', 'B', 'user-1', '{{}}', 'old', 'cus_1', {AT}, '{OTHER}', "
    "'end_user')",
]


def _state(c: Connection) -> dict[str, list[tuple[object, ...]]]:
    q = {
        "plan": "SELECT key, name, stripe_price_id, account_kit_key FROM plan ORDER BY key",
        "plan_quota": "SELECT plan_key, primitive, quota FROM plan_quota ORDER BY plan_key",
        "tenant": "SELECT id, external_id, stripe_customer_id, plan_key FROM tenant ORDER BY id",
        "subscription": "SELECT tenant_id, plan_key, status FROM subscription",
        "alert_policy": "SELECT plan_key, tenant_id, low_balance FROM alert_policy ORDER BY low_balance",
        "webhook_endpoint": "SELECT id, tenant_id FROM webhook_endpoint ORDER BY id",
        "usage_event": "SELECT tenant_id, idempotency_key FROM usage_event",
        "ledger_entry": "SELECT id, tenant_id, amount, balance_after FROM ledger_entry ORDER BY id",
    }
    return {k: [tuple(r) for r in c.execute(text(v)).all()] for k, v in q.items()}


def test_an_existing_database_moves_to_keys_per_organization(empty_url: str) -> None:  # noqa: F811
    upgrade(empty_url, BEFORE, lock=False)
    engine = create_engine(normalize_url(empty_url))
    app_engine = make_engine(empty_url)
    try:
        with engine.begin() as c:
            for sql in ROWS + MORE:
                c.execute(text(sql))
            before = _state(c)
        upgrade(empty_url, "head", lock=False)
        with engine.begin() as c:
            assert _state(c) == before
            for table in ("account_kit", "plan", "plan_quota", "tenant", "subscription"):
                owners = c.execute(text(f"SELECT DISTINCT organization_id FROM {table}")).scalars().all()
                assert owners == [DEFAULT_ORG_ID], table
            policies = c.execute(text("SELECT plan_key, organization_id FROM alert_policy ORDER BY low_balance")).all()
            assert [tuple(p) for p in policies] == [("old", DEFAULT_ORG_ID), (None, None)]
            hooks = c.execute(text("SELECT id, organization_id FROM webhook_endpoint ORDER BY id")).all()
            assert [tuple(h) for h in hooks] == [("whe_1", DEFAULT_ORG_ID), ("whe_2", None)]
            # A second organization owns the same names.
            for sql in OTHERS:
                c.execute(text(sql))
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM plan WHERE key = 'old'")).scalar() == 2
            assert c.execute(text("SELECT count(*) FROM tenant WHERE stripe_customer_id = 'cus_1'")).scalar() == 2
        # The references carry the organization: nobody can name another organization's kit or plan
        # (the app's engine: SQLite with foreign keys on).
        for sql in (
            "INSERT INTO plan (organization_id, key, name, account_kit_key, period, overage, included_credits, "
            f"archived, created_at, updated_at) VALUES ('{OTHER}', 'x', 'X', 'kit_only_default', 'month', 'refuse', "
            f"0, false, {AT}, {AT})",
            f"UPDATE tenant SET plan_key = 'nope' WHERE id = '{T}'",
            f"INSERT INTO tenant (id, name, external_id, metadata, created_at, organization_id, kind) VALUES "
            f"('ten_{'c' * 32}', 'C', 'user-1', '{{}}', {AT}, '{OTHER}', 'end_user')",
        ):
            try:
                with app_engine.begin() as c:
                    c.execute(text(sql))
                raise AssertionError(f"accepted: {sql}")
            except IntegrityError:
                pass
    finally:
        engine.dispose()
        app_engine.dispose()


def test_down_to_0017_and_up_again_keeps_the_rows(empty_url: str) -> None:  # noqa: F811
    from alembic import command

    upgrade(empty_url, BEFORE, lock=False)
    engine = create_engine(normalize_url(empty_url))
    try:
        with engine.begin() as c:
            for sql in ROWS + MORE:
                c.execute(text(sql))
            before = _state(c)
        upgrade(empty_url, "head", lock=False)
        command.downgrade(alembic_config(empty_url), "0017_organizations")
        with engine.connect() as c:
            assert _state(c) == before
            cols = {col["name"] for col in engine.dialect.get_columns(c, "plan_quota")}
            assert "organization_id" not in cols
        upgrade(empty_url, "head", lock=False)
        with engine.connect() as c:
            assert _state(c) == before
    finally:
        engine.dispose()
