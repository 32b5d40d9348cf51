"""Migration 0011_hold_budget: up from 0010 with alert rows that reference each other (SQLite must
rebuild those tables with foreign keys enforced) and back down, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from app.core.db import normalize_url
from app.core.migrate import alembic_config, upgrade
from tests.core.test_migration_scopes_rollups import T, empty_url  # noqa: F401  (fixture)

BEFORE = "0010_periods"
AT = "'2026-07-01 00:00:00'"
ROWS = [
    f"INSERT INTO tenant (id, name, metadata, created_at) VALUES ('{T}', 'T', '{{}}', {AT})",
    "INSERT INTO webhook_endpoint (id, tenant_id, url, secret, event_types, active, consecutive_failures, "
    f"created_at, updated_at) VALUES ('whe_1', NULL, 'http://x', 'whsec_x', '[\"*\"]', true, 0, {AT}, {AT})",
    "INSERT INTO alert_event (id, tenant_id, type, dedupe_key, payload, fanned_out, created_at) "
    f"VALUES (1, '{T}', 'credits.granted', 'g1', '{{}}', true, {AT})",
    "INSERT INTO webhook_delivery (id, event_id, endpoint_id, tenant_id, status, attempts, next_attempt_at, "
    f"created_at) VALUES (1, 1, 'whe_1', '{T}', 'delivered', 1, {AT}, {AT})",
    f"INSERT INTO webhook_attempt (id, delivery_id, tenant_id, at, duration_ms) VALUES (1, 1, '{T}', {AT}, 5)",
    "INSERT INTO credit_hold (id, tenant_id, idempotency_key, request_hash, primitive, quantity, amount, status, "
    f"expires_at, created_at) VALUES ('hold_1', '{T}', 'h', 'x', 'email.send', 1, 1000000, 'open', {AT}, {AT})",
]
NO_TENANT = [
    "INSERT INTO alert_event (id, tenant_id, type, dedupe_key, payload, fanned_out, created_at) "
    f"VALUES (2, NULL, 'webhook.endpoint_disabled', 'd1', '{{}}', true, {AT})",
    "INSERT INTO webhook_delivery (id, event_id, endpoint_id, tenant_id, status, attempts, next_attempt_at, "
    f"created_at) VALUES (2, 2, 'whe_1', NULL, 'pending', 0, {AT}, {AT})",
    f"INSERT INTO webhook_attempt (id, delivery_id, tenant_id, at, duration_ms) VALUES (2, 2, NULL, {AT}, 5)",
]


def _count(engine: object, table: str) -> int:
    with engine.connect() as c:  # type: ignore[attr-defined]
        return int(c.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_hold_budget_migration_up_and_down_keeps_the_alert_rows(empty_url: str) -> None:  # noqa: F811
    upgrade(empty_url, BEFORE, lock=False)
    engine = create_engine(normalize_url(empty_url))
    with engine.begin() as c:
        for sql in ROWS:
            c.execute(text(sql))
    upgrade(empty_url, "head", lock=False)  # with foreign keys on (the app's engine), on SQLite too
    with engine.begin() as c:
        hold = c.execute(text("SELECT api_key_id, budget_period_start FROM credit_hold")).one()
        assert tuple(hold) == (None, None)  # an old hold counts in no budget
        for sql in NO_TENANT:  # events of no tenant (an operator endpoint's notice) may be stored now
            c.execute(text(sql))
        joined = c.execute(
            text(
                "SELECT e.type, d.status, a.duration_ms FROM webhook_attempt a "
                "JOIN webhook_delivery d ON d.id = a.delivery_id JOIN alert_event e ON e.id = d.event_id ORDER BY a.id"
            )
        ).all()
    assert [tuple(r) for r in joined] == [
        ("credits.granted", "delivered", 5),
        ("webhook.endpoint_disabled", "pending", 5),
    ]
    command.downgrade(alembic_config(empty_url), BEFORE)
    assert [_count(engine, t) for t in ("alert_event", "webhook_delivery", "webhook_attempt")] == [1, 1, 1]
    with pytest.raises(IntegrityError), engine.begin() as c:
        c.execute(text(NO_TENANT[0]))  # tenant_id is required again
    with engine.connect() as c:
        assert "held_credits" not in set(c.execute(text("SELECT * FROM key_budget_usage")).keys())
    engine.dispose()


def test_policy_nulls_migration_turns_a_stored_json_null_into_sql_null(empty_url: str) -> None:  # noqa: F811
    upgrade(empty_url, "0012_pg_charge", lock=False)
    engine = create_engine(normalize_url(empty_url))
    with engine.begin() as c:
        c.execute(text(ROWS[0]))
        c.execute(
            text(
                "INSERT INTO alert_policy (tenant_id, quota_percents, low_balance, updated_at) "
                f"VALUES ('{T}', 'null', 5, {AT})"
            )
        )
    upgrade(empty_url, "head", lock=False)
    with engine.connect() as c:
        row = c.execute(text("SELECT quota_percents IS NULL, low_balance FROM alert_policy")).one()
    assert tuple(row) == (True, 5)
    engine.dispose()
