"""Migration 0010_periods: up from 0009 and back down, on SQLite and PostgreSQL; the new tables
start empty and plan quotas keep their rows (no overage price)."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text

from app.core.db import normalize_url
from app.core.migrate import alembic_config, upgrade
from tests.core.test_migration_scopes_rollups import _TABLES, empty_url  # noqa: F401  (fixture)

BEFORE = "0009_alerts"


def test_periods_migration_up_and_down(empty_url: str) -> None:  # noqa: F811
    upgrade(empty_url, BEFORE, lock=False)
    engine = create_engine(normalize_url(empty_url))
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO account_kit (key, name, allowed_primitives, limits, allowed_connections, created_at, "
                "updated_at) VALUES ('k', 'K', '[]', '{}', '[]', '2026-07-01 00:00:00', '2026-07-01 00:00:00')"
            )
        )
        c.execute(
            text(
                "INSERT INTO plan (key, name, account_kit_key, period, overage, included_credits, archived, "
                "created_at, updated_at) VALUES ('p', 'P', 'k', 'month', 'allow', 0, false, "
                "'2026-07-01 00:00:00', '2026-07-01 00:00:00')"
            )
        )
        c.execute(text("INSERT INTO plan_quota (plan_key, primitive, quota) VALUES ('p', 'email.send', 10)"))
    upgrade(empty_url, "head", lock=False)
    with engine.connect() as c:
        assert c.execute(text("SELECT quota, overage_price_id FROM plan_quota")).one() == (10, None)
        assert c.execute(text("SELECT count(*) FROM billing_period")).scalar_one() == 0
        assert c.execute(text("SELECT count(*) FROM overage_report")).scalar_one() == 0
    command.downgrade(alembic_config(empty_url), BEFORE)
    with engine.connect() as c:
        cols = set(c.execute(text("SELECT * FROM plan_quota")).keys())
        tables = {r[0] for r in c.execute(text(_TABLES[engine.dialect.name]))}
    assert "overage_price_id" not in cols and not {"billing_period", "overage_report"} & tables
    engine.dispose()
