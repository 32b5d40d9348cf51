"""Migration 0024_distribution_keys on SQLite and PostgreSQL: the hot tables' primary keys gain tenant_id
(usage_event, ledger_entry and llm_call on PostgreSQL only: SQLite keeps their rowid), the rows stay
through up, down and up again, and ids stay the rows' own (a new row still numbers itself)."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect, text

from app.core.db import normalize_url
from app.core.migrate import alembic_config, upgrade
from tests.core.test_migration_organizations import BEFORE, ROWS
from tests.core.test_migration_scopes_rollups import T, empty_url  # noqa: F401  (fixture)

PREVIOUS = "0023_public_ids"
TEXT_IDS = ("credit_hold", "credit_bucket", "credit_reversal")
IDENTITIES = ("usage_event", "ledger_entry", "llm_call")


def _keys(url: str) -> dict[str, list[str]]:
    engine = create_engine(normalize_url(url))
    i = inspect(engine)
    keys = {t: i.get_pk_constraint(t)["constrained_columns"] for t in TEXT_IDS + IDENTITIES}
    engine.dispose()
    return keys


def _counts(url: str) -> dict[str, int]:
    engine = create_engine(normalize_url(url))
    with engine.connect() as c:
        out = {t: int(c.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in TEXT_IDS + IDENTITIES}
    engine.dispose()
    return out


def test_0024_keys_go_up_down_and_up_with_the_rows(empty_url: str) -> None:  # noqa: F811
    upgrade(empty_url, BEFORE, lock=False)
    engine = create_engine(normalize_url(empty_url))
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as c:
        for sql in ROWS:  # a tenant with buckets, ledger entries and an open hold
            c.execute(text(sql))
    upgrade(empty_url, PREVIOUS, lock=False)
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO credit_reversal (id, tenant_id, entry_id, idempotency_key, reason, amount, created_at) "
                "VALUES ('rev_1', :t, 1, 'r1', 'test', 0, '2026-07-01 00:00:00')"
            ),
            {"t": T},
        )
    engine.dispose()
    before = _counts(empty_url)
    assert all(before[t] >= 1 for t in ("credit_hold", "credit_bucket", "credit_reversal", "ledger_entry")), before

    upgrade(empty_url, "head", lock=False)
    keys = _keys(empty_url)
    assert all(keys[t] == ["tenant_id", "id"] for t in TEXT_IDS), keys
    assert all(keys[t] == (["id"] if sqlite else ["tenant_id", "id"]) for t in IDENTITIES), keys
    assert _counts(empty_url) == before

    command.downgrade(alembic_config(empty_url), PREVIOUS)
    assert _keys(empty_url) == {t: ["id"] for t in TEXT_IDS + IDENTITIES}
    assert _counts(empty_url) == before

    upgrade(empty_url, "head", lock=False)
    assert _keys(empty_url) == keys and _counts(empty_url) == before
    # An identity still numbers a new row by itself under the new key.
    engine = create_engine(normalize_url(empty_url))
    with engine.begin() as c:
        top = c.execute(text("SELECT COALESCE(MAX(id), 0) FROM ledger_entry")).scalar_one()
        new = c.execute(
            text(
                "INSERT INTO ledger_entry (tenant_id, kind, action, amount, balance_after, created_at) "
                "VALUES (:t, 'grant', 'test', 1, 1, '2026-07-02 00:00:00') RETURNING id"
            ),
            {"t": T},
        ).scalar_one()
        assert new > top
    engine.dispose()
