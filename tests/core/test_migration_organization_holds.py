"""Migration 0020_organization_holds on SQLite and PostgreSQL: an open hold made before it stays
held on its tenant's own account (own_reserved true, no payer) and closes exactly as before; the
period counters cost no organization anything; platform tiers and the organization's tier columns
come and go with the migration."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import create_engine, text

from app.core.auth import TenantScope
from app.core.clock import FrozenClock
from app.core.db import make_engine, normalize_url
from app.core.migrate import alembic_config, upgrade
from app.metering.commands import release
from tests.core.test_migration_organizations import BEFORE, ROWS
from tests.core.test_migration_scopes_rollups import T, empty_url  # noqa: F401  (fixture)

PREVIOUS = "0019_org_scoped_keys"


def test_an_open_hold_from_before_closes_on_its_own_account(empty_url: str) -> None:  # noqa: F811
    upgrade(empty_url, BEFORE, lock=False)
    engine = create_engine(normalize_url(empty_url))
    with engine.begin() as c:
        for sql in ROWS:
            c.execute(text(sql))
        c.execute(
            text(
                "INSERT INTO usage_counter (tenant_id, period_start, primitive, period_end, used, overage, credits) "
                "VALUES (:t, '2026-07-01 00:00:00', 'email.send', '2026-08-01 00:00:00', 5, 0, 5000000)"
            ),
            {"t": T},
        )
    upgrade(empty_url, PREVIOUS, lock=False)
    upgrade(empty_url, "head", lock=False)
    with engine.begin() as c:
        hold = c.execute(text("SELECT own_reserved, payer_id, status FROM credit_hold")).one()
        assert (bool(hold[0]), hold[1], hold[2]) == (True, None, "open")
        assert c.execute(text("SELECT payer_credits FROM usage_counter")).scalar_one() == 0
        assert c.execute(text("SELECT count(*) FROM platform_tier")).scalar_one() == 0
        assert c.execute(text("SELECT tier_key, tier_status FROM organization")).one() == (None, None)
    engine.dispose()
    app_engine = make_engine(empty_url)
    try:
        clock = FrozenClock(datetime(2026, 7, 2, tzinfo=UTC))
        view = release(app_engine, clock, TenantScope(T), "hold_1")
        assert view.status == "released" and view.available_after == 15_000_000  # its own account, as before
        with app_engine.connect() as c:
            assert c.execute(text("SELECT reserved FROM credit_account")).scalar_one() == 0
    finally:
        app_engine.dispose()


def test_0020_goes_down_and_up_again(empty_url: str) -> None:  # noqa: F811
    from alembic import command

    upgrade(empty_url, "head", lock=False)
    command.downgrade(alembic_config(empty_url), PREVIOUS)
    engine = create_engine(normalize_url(empty_url))
    with engine.connect() as c:
        assert "platform_tier" not in engine.dialect.get_table_names(c)
        assert "payer_id" not in {col["name"] for col in engine.dialect.get_columns(c, "credit_hold")}
        assert "tier_key" not in {col["name"] for col in engine.dialect.get_columns(c, "organization")}
    engine.dispose()
    upgrade(empty_url, "head", lock=False)
    engine = create_engine(normalize_url(empty_url))
    with engine.connect() as c:
        assert "payer_credits" in {col["name"] for col in engine.dialect.get_columns(c, "usage_counter")}
    engine.dispose()
