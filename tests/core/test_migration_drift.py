"""The schema the migrations build is the schema the models declare, on SQLite and on PostgreSQL.

The `db` fixture's database is a copy of a fresh database that app.core.migrate.upgrade took to
head (see tests/conftest.py). Alembic's autogenerate compares it with SQLModel.metadata: tables,
columns, types, nullability, server defaults, indexes, unique constraints and foreign keys. Any
difference fails the test with the list; the fix is a migration, or a model matching the ones we
have. Autogenerate does not look at triggers, functions or CHECK constraints (the append-only
guards of ledger_entry and audit_log are created by migrations only), so those are not compared.
"""

from __future__ import annotations

from pprint import pformat
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Identity, Integer
from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers every table on SQLModel.metadata, as migrations/env.py does)
from app.core.distribution import SQLITE_ROWID_KEYS
from app.core.migrate import alembic_config
from tests.conftest import Database


def _sqlite_rowid_identity(change: tuple[Any, ...], dialect: str) -> bool:
    """An engine artefact, not drift: SQLite has no identity columns. The models' Identity() on a
    single integer primary key is not rendered there; the column is the rowid alias, which numbers
    itself, and reflects with no default. The tables of distribution.SQLITE_ROWID_KEYS declare
    (tenant_id, id), PostgreSQL's key, and keep that rowid on SQLite (migration 0024). Exactly that
    change on SQLite, nothing wider."""
    if dialect != "sqlite" or change[0] != "modify_default":
        return False
    _, _, table_name, column_name, existing, reflected, declared = change
    table = SQLModel.metadata.tables[table_name]
    return (
        reflected is None
        and isinstance(declared, Identity)
        and isinstance(existing["existing_type"], Integer)
        and (list(table.primary_key.columns) == [table.c[column_name]] or table_name in SQLITE_ROWID_KEYS)
    )


def _drift(diffs: list[Any], dialect: str) -> list[Any]:
    """compare_metadata's differences minus the artefacts above. Column changes come grouped per
    column; only the artefact itself is dropped from a group, so a real change next to it stays."""
    out: list[Any] = []
    for diff in diffs:
        if isinstance(diff, list):
            kept = [change for change in diff if not _sqlite_rowid_identity(change, dialect)]
            if kept:
                out.append(kept)
        else:
            out.append(diff)
    return out


def test_migrations_build_the_schema_the_models_declare(db: Database) -> None:
    head = ScriptDirectory.from_config(alembic_config(db.url)).get_current_head()
    with db.engine.connect() as conn:
        # compare_server_default as a flag, not a callable: Alembic 1.20 hands a callable the
        # reflected default as `.arg.text`, which PostgreSQL's reflected Identity() does not have.
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        assert context.get_current_revision() == head, "the fixture's database is not at the head migration"
        drift = _drift(compare_metadata(context, SQLModel.metadata), conn.dialect.name)
    assert drift == [], f"models and migrations differ on {db.backend}:\n{pformat(drift, width=120)}"
