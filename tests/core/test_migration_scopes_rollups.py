"""Migration 0007_scopes_rollups on a database that already has keys and usage: old keys keep all
three scopes, period counters learn their credits, and the hourly rollups are backfilled from the
events (UTC hours), on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.core.db import normalize_url
from app.core.migrate import alembic_config, upgrade
from tests.conftest import PG_URL, _backends, _pg_admin

BEFORE = "0004"  # the revision this migration follows


@pytest.fixture(params=_backends())
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    assert PG_URL
    name = f"mk_mig_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(normalize_url(PG_URL)).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


T = "ten_" + "a" * 32
_TABLES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgresql": "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
}


def test_upgrade_backfills_counters_and_rollups(empty_url: str) -> None:
    upgrade(empty_url, BEFORE, lock=False)
    engine = create_engine(normalize_url(empty_url))
    utc = "" if engine.dialect.name == "sqlite" else "+00"  # SQLite stores naive UTC text
    ps = "2026-07-01 00:00:00" + utc
    with engine.begin() as c:
        c.execute(
            text("INSERT INTO tenant (id, name, metadata, created_at) VALUES (:t, 'Old', '{}', :ps)"),
            {"t": T, "ps": ps},
        )
        c.execute(
            text(
                "INSERT INTO api_key (id, kind, tenant_id, name, key_hash, prefix, created_at) "
                "VALUES (:id, 'tenant', :t, 'old', :h, 'mk_tn_old', :ps)"
            ),
            {"id": "key_" + "b" * 32, "t": T, "h": "0" * 64, "ps": ps},
        )
        events = [  # (primitive, quantity, credits, created_at)
            ("email.send", 2, 2_000_000, "2026-07-01 12:05:00"),
            ("email.send", 1, 1_000_000, "2026-07-01 12:55:00"),
            ("email.send", 3, 3_000_000, "2026-07-01 13:00:00"),
            ("search.web", 1, 1_000_000, "2026-07-02 08:30:00"),
        ]
        for i, (p, q, cr, at) in enumerate(events):
            c.execute(
                text(
                    "INSERT INTO usage_event (tenant_id, idempotency_key, request_hash, kind, primitive, quantity, "
                    "credits, period_start, result, created_at) VALUES (:t, :k, 'h', 'charge', :p, :q, :c, :ps, "
                    "'{}', :at)"
                ),
                {"t": T, "k": f"k{i}", "p": p, "q": q, "c": cr, "ps": ps, "at": at + utc},
            )
        for p, used in (("email.send", 6), ("search.web", 1)):
            c.execute(
                text(
                    "INSERT INTO usage_counter (tenant_id, period_start, primitive, period_end, used, overage) "
                    "VALUES (:t, :ps, :p, :pe, :u, 0)"
                ),
                {"t": T, "ps": ps, "pe": "2026-08-01 00:00:00" + utc, "p": p, "u": used},
            )
    upgrade(empty_url, "head", lock=False)
    with engine.connect() as c:
        assert c.execute(text("SELECT scopes, expires_at FROM api_key")).one() == ("read meter manage", None)
        counters = {r[0]: r[1] for r in c.execute(text("SELECT primitive, credits FROM usage_counter"))}
        assert counters == {"email.send": 6_000_000, "search.web": 1_000_000}
        rollups = [
            (str(r[0])[:13], r[1], r[2], r[3], r[4], r[5])
            for r in c.execute(
                text(
                    "SELECT hour_start, primitive, api_key_id, quantity, credits, events FROM usage_rollup "
                    "ORDER BY hour_start, primitive"
                )
            )
        ]
    assert rollups == [
        ("2026-07-01 12", "email.send", "", 3, 3_000_000, 2),
        ("2026-07-01 13", "email.send", "", 3, 3_000_000, 1),
        ("2026-07-02 08", "search.web", "", 1, 1_000_000, 1),
    ]
    # And back: the downgrade drops what the upgrade added.
    command.downgrade(alembic_config(empty_url), BEFORE)
    with engine.connect() as c:
        cols = set(c.execute(text("SELECT * FROM api_key")).keys())
        tables = {r[0] for r in c.execute(text(_TABLES[engine.dialect.name]))}
    assert "scopes" not in cols and "expires_at" not in cols and "usage_rollup" not in tables
    engine.dispose()
