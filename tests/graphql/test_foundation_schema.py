"""Schema-level guarantees that need no database: the permission catalog covers every root
field, every tenant-owned table carries tenant_id, and schema.graphql is the contract."""

from __future__ import annotations

from pathlib import Path

from graphql import build_schema as build_sdl_schema
from graphql import find_breaking_changes
from sqlmodel import SQLModel
from typer.testing import CliRunner

import app.models  # noqa: F401  (every table in the metadata)
from app.cli import SCHEMA_FILE, cli
from app.core.auth import SCOPES
from app.graphql.permissions import CATALOG
from app.graphql.schema import build_schema, export_sdl
from app.settings import Settings
from tests.schema_walk import graphql_schema, root_fields

# Tables that belong to no single tenant. Add a table here only if it is catalog or global data
# (what the operator sells, or infrastructure), never because a tenant_id was forgotten.
NOT_TENANT_OWNED = {
    "tenant",  # the tenant itself (its id is the tenant id)
    "organization",  # owns tenants (its id is its own account's tenant id); rows it owns carry organization_id
    "account_kit",  # catalog: entitlement templates
    "plan",  # catalog
    "plan_quota",  # catalog: a plan's quotas
    "plan_version",  # catalog: each version's price and included credits
    # The pricing catalog: what a primitive, a model or a credit pack costs, for every tenant alike.
    "price",
    "llm_rate",
    "media_price",
    "pricing_setting",
    "credit_pack",
    "primitive",  # the operator's primitive catalog
    "organization_stripe",  # an organization's own Stripe account: keyed by organization_id (it owns no tenant)
    "platform_tier",  # the platform's catalog: what it sells organizations (an organization's tier is on organization)
    "audit_log",  # operator-wide history; tenant_id is a filter, not ownership (and outlives nothing)
    "server_secret",  # the install's own secrets (the public ids' key), no tenant's
}
FOUNDATION_CATALOG = {"tenant", "account_kit", "plan", "plan_quota"}


def test_every_root_field_is_in_the_permission_catalog() -> None:
    fields = {f"{op}.{name}" for op, name in root_fields(graphql_schema())}
    missing = sorted(fields - CATALOG.keys())
    assert not missing, f"root fields missing from app/graphql/permissions.py CATALOG: {missing}"
    stale = sorted(CATALOG.keys() - fields)
    assert not stale, f"CATALOG entries naming fields that do not exist: {stale}"
    for coordinate, rule in CATALOG.items():
        assert rule.roles and rule.roles <= {"operator", "organization", "tenant"}, coordinate
        # Every root field names the key scope it needs; a write never needs only `read`.
        assert rule.scope in SCOPES, coordinate
        if coordinate.startswith("Mutation."):
            assert rule.scope != "read", coordinate


def test_catalog_is_checked_against_the_production_schema_too() -> None:
    # Production drops introspection, not fields: the same root fields must be there.
    prod = build_schema(Settings(env="production"))._schema
    dev = graphql_schema()
    assert set(root_fields(prod)) == set(root_fields(dev))


def test_every_tenant_owned_table_has_a_tenant_id() -> None:
    tables = {t.name: t for t in SQLModel.metadata.sorted_tables}
    assert {"tenant", "api_key", "subscription", "credit_account", "credit_bucket", "ledger_entry"} <= tables.keys()
    unknown_exemptions = FOUNDATION_CATALOG - tables.keys()
    assert not unknown_exemptions, f"allow-list names tables that do not exist: {unknown_exemptions}"
    for name, table in tables.items():
        if name in NOT_TENANT_OWNED:
            continue
        assert "tenant_id" in table.c, f"table {name!r} has no tenant_id column (or add it to NOT_TENANT_OWNED)"
        targets = {fk.target_fullname for fk in table.c.tenant_id.foreign_keys}
        assert targets == {"tenant.id"}, f"{name}.tenant_id must reference tenant.id, got {targets}"


def test_export_schema_check_passes() -> None:
    result = CliRunner().invoke(cli, ["export-schema", "--check"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output


def test_export_schema_check_fails_on_drift(tmp_path: Path) -> None:
    stale = tmp_path / "schema.graphql"
    stale.write_text(SCHEMA_FILE.read_text().replace("type Query {", "type Query {\n  gone: Int", 1))
    result = CliRunner().invoke(cli, ["export-schema", "--check", "--path", str(stale)])
    assert result.exit_code == 1
    # Without --check the file is rewritten to match the code, and then the check passes.
    assert CliRunner().invoke(cli, ["export-schema", "--path", str(stale)]).exit_code == 0
    assert stale.read_text() == export_sdl()
    assert CliRunner().invoke(cli, ["export-schema", "--check", "--path", str(stale)]).exit_code == 0


def test_no_breaking_changes_against_the_checked_in_schema() -> None:
    checked_in = build_sdl_schema(SCHEMA_FILE.read_text())
    built = graphql_schema()
    breaking = find_breaking_changes(checked_in, built)
    assert breaking == [], [f"{c.type.name}: {c.description}" for c in breaking]


def test_find_breaking_changes_would_notice_a_removed_field() -> None:
    # The contract test above can fail: dropping a field is reported as breaking.
    checked_in = build_sdl_schema(SCHEMA_FILE.read_text())
    shrunk = build_sdl_schema(SCHEMA_FILE.read_text().replace("  viewer: Tenant\n", "", 1))
    assert any("viewer" in c.description for c in find_breaking_changes(checked_in, shrunk))


def test_sdl_builds_back_to_the_served_schema() -> None:
    """schema.graphql names its roots (`schema {}`), so SDL tools (codegen, build_schema) rebuild
    exactly the served schema: same roots, and no change either way."""
    from graphql import find_dangerous_changes

    served = build_schema(Settings())._schema
    rebuilt = build_sdl_schema(SCHEMA_FILE.read_text())
    assert SCHEMA_FILE.read_text().startswith("schema {")
    for op in ("query_type", "mutation_type", "subscription_type"):
        a, b = getattr(served, op), getattr(rebuilt, op)
        assert (a and a.name) == (b and b.name), op
    assert find_breaking_changes(served, rebuilt) == [] and find_breaking_changes(rebuilt, served) == []
    assert find_dangerous_changes(served, rebuilt) == []
    assert find_dangerous_changes(rebuilt, served) == []
    assert set(served.type_map) == set(rebuilt.type_map)
