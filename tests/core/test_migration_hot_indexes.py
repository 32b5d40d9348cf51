"""Migration 0016_hot_indexes: credit_bucket's tenant_id index (a duplicate of the prefix of
uq_credit_bucket_grant_key) is dropped on the way up and made again on the way down, on SQLite and
PostgreSQL; the (tenant_id, id) paths the history reads need stay."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from app.core.db import normalize_url
from app.core.migrate import alembic_config, upgrade
from tests.core.test_migration_scopes_rollups import T, empty_url  # noqa: F401  (fixture)

BEFORE = "0015_pg_charge_batch_once"
AT = "'2026-07-01 00:00:00'"
# The newest-first history of each (usage history; credit history, its count, reconcile).
TENANT_KEYED = ("usage_event", "ledger_entry")
LIVE = (
    "SELECT id, remaining FROM credit_bucket WHERE tenant_id = :t AND remaining > 0 "
    "ORDER BY expires_at IS NULL, expires_at, created_at, id"
)


def _indexes(engine: Any, table: str) -> set[str]:
    return {i["name"] for i in inspect(engine).get_indexes(table)}


def _tenant_id_path(engine: Any, table: str) -> tuple[list[str], bool]:
    """(the primary key's columns, whether the separate (tenant_id, id) index exists)."""
    pk = list(inspect(engine).get_pk_constraint(table)["constrained_columns"])
    return pk, f"ix_{table}_tenant_id_id" in _indexes(engine, table)


def _unique(engine: Any) -> list[list[str]]:
    # SQLite reports the UNIQUE constraint's index as a unique constraint, PostgreSQL too.
    return [list(u["column_names"]) for u in inspect(engine).get_unique_constraints("credit_bucket")]


def test_hot_indexes_migration_drops_the_duplicate_and_keeps_what_reads_need(empty_url: str) -> None:  # noqa: F811
    upgrade(empty_url, BEFORE, lock=False)
    engine = create_engine(normalize_url(empty_url))
    assert "ix_credit_bucket_tenant_id" in _indexes(engine, "credit_bucket")
    with engine.begin() as c:
        c.execute(text(f"INSERT INTO tenant (id, name, metadata, created_at) VALUES ('{T}', 'T', '{{}}', {AT})"))
        c.execute(
            text(
                "INSERT INTO ledger_entry (tenant_id, kind, action, amount, balance_after, created_at) "
                f"VALUES ('{T}', 'grant', 'adjustment', 5, 5, {AT})"
            )
        )
        for n, left in ((1, 5), (2, 0)):
            c.execute(
                text(
                    "INSERT INTO credit_bucket (id, tenant_id, source, granted, remaining, grant_key, created_at) "
                    f"VALUES ('bkt_{n}', '{T}', 'adjustment', 5, {left}, 'g{n}', {AT})"
                )
            )
    upgrade(empty_url, "head", lock=False)
    engine.dispose()
    assert "ix_credit_bucket_tenant_id" not in _indexes(engine, "credit_bucket")
    assert ["tenant_id", "grant_key"] in _unique(engine)  # what serves a read by tenant now
    # Migration 0024_distribution_keys puts tenant_id first in PostgreSQL's key (SQLite keeps its rowid).
    head_key = ["id"] if engine.dialect.name == "sqlite" else ["tenant_id", "id"]
    for table in TENANT_KEYED:
        assert _tenant_id_path(engine, table) == (head_key, True), table
    with engine.begin() as c:
        assert c.execute(text(LIVE), {"t": T}).all() == [("bkt_1", 5)]  # the rows are untouched
        new = c.execute(
            text(
                "INSERT INTO ledger_entry (tenant_id, kind, action, amount, balance_after, created_at) "
                f"VALUES ('{T}', 'debit', 'email.send', -1, 4, {AT}) RETURNING id"
            )
        ).scalar_one()
        assert new == 2  # the identity goes on where it was
        if engine.dialect.name == "sqlite":
            plan = " ".join(str(r[-1]) for r in c.execute(text("EXPLAIN QUERY PLAN " + LIVE), {"t": T}))
            assert "SEARCH credit_bucket USING INDEX sqlite_autoindex_credit_bucket" in plan, plan
        # The grant key is still unique per tenant (the constraint is not touched).
        dup = (
            "INSERT INTO credit_bucket (id, tenant_id, source, granted, remaining, grant_key, created_at) "
            f"VALUES ('bkt_3', '{T}', 'adjustment', 1, 1, 'g1', {AT})"
        )
        with pytest.raises(IntegrityError), c.begin_nested():
            c.execute(text(dup))
    command.downgrade(alembic_config(empty_url), BEFORE)
    engine.dispose()
    assert "ix_credit_bucket_tenant_id" in _indexes(engine, "credit_bucket")
    for table in TENANT_KEYED:
        assert _tenant_id_path(engine, table) == (["id"], True), table
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM credit_bucket")).scalar_one() == 2
        assert c.execute(text("SELECT id, amount FROM ledger_entry ORDER BY id")).all() == [(1, 5), (2, -1)]
    engine.dispose()
