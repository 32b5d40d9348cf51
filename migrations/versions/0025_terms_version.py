"""A version of each tenant's and each organization's terms, which the charge's first statement reads
(issue 24): a process keeps a tenant's terms (kit, plan, period, budgets, alert policy) and skips
re-reading them while both versions are the ones it read them under (app/metering/terms_cache.py).

`tenant.terms_version` changes whenever a term of that tenant changes: its own plan, plan version,
kit, kind or organization; its subscription; a key budget of its keys; its alert policy; a recorded
billing period. `organization.terms_version` changes with the organization's wallets, exemption or
cap, any of its plans or kits, and a plan's alert policy. Triggers keep them, so no writer (a
service, the CLI, a hand-written UPDATE) can forget to.

A new version is a random 64-bit value, not a count: a row deleted and created again under the same
id (tests do this; a restored backup does too) never repeats a version another process still holds.
Two processes that read the same version read the same terms.

SQLite drops a table's triggers when a migration rebuilds it (batch_alter_table): a later migration
that rebuilds one of these tables creates its triggers again (TRIGGERS below).

Revision ID: 0025_terms_version
Revises: 0024_distribution_keys
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0025_terms_version"
down_revision = "0024_distribution_keys"
branch_labels = None
depends_on = None

# The terms' columns of the two rows themselves (app/metering/charge_repository.py _TERMS_COLUMNS).
TENANT_TERMS = "plan_key, plan_version, account_kit_key, kind, organization_id"
ORGANIZATION_TERMS = "end_user_wallets, platform_credits_exempt, end_user_credit_cap"
# table -> (whose version a change of its rows bumps, through which of its columns)
BUMPS = {
    "plan": (("organization", "organization_id"),),
    "account_kit": (("organization", "organization_id"),),
    "subscription": (("tenant", "tenant_id"),),
    "key_budget": (("tenant", "tenant_id"),),
    "billing_period": (("tenant", "tenant_id"),),
    # A plan's policy belongs to its organization; a tenant's own to the tenant.
    "alert_policy": (("organization", "organization_id"), ("tenant", "tenant_id")),
}
SQLITE_STAMP = "random()"


def _sqlite_triggers() -> list[str]:
    out = []
    for owner, columns in (("tenant", TENANT_TERMS), ("organization", ORGANIZATION_TERMS)):
        bump = f"UPDATE {owner} SET terms_version = {SQLITE_STAMP} WHERE id = NEW.id;"
        out.append(f"CREATE TRIGGER {owner}_terms_insert AFTER INSERT ON {owner} BEGIN {bump} END")
        out.append(f"CREATE TRIGGER {owner}_terms_update AFTER UPDATE OF {columns} ON {owner} BEGIN {bump} END")
    for table, targets in BUMPS.items():
        for event, rows in (("INSERT", ("NEW",)), ("UPDATE", ("OLD", "NEW")), ("DELETE", ("OLD",))):
            body = " ".join(
                f"UPDATE {owner} SET terms_version = {SQLITE_STAMP} "
                f"WHERE id IN ({', '.join(f'{row}.{column}' for row in rows)});"
                for owner, column in targets
            )
            out.append(f"CREATE TRIGGER {table}_terms_{event.lower()} AFTER {event} ON {table} BEGIN {body} END")
    return out


# One function per owner table: a changed row moves its owner's version (the row's old owner too).
_PG_OF_OWNER = """
CREATE FUNCTION meterkit_terms_of_{owner}() RETURNS trigger AS $$
BEGIN
  IF TG_OP <> 'INSERT' THEN
    UPDATE {owner} SET terms_version = meterkit_terms_stamp() WHERE id = OLD.{column};
  END IF;
  IF TG_OP <> 'DELETE' THEN
    UPDATE {owner} SET terms_version = meterkit_terms_stamp() WHERE id = NEW.{column};
  END IF;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""

PG_FUNCTIONS = """
CREATE FUNCTION meterkit_terms_stamp() RETURNS bigint AS
  $$ SELECT floor((random() - 0.5) * 1.8e19)::bigint $$ LANGUAGE sql VOLATILE;
CREATE FUNCTION meterkit_terms_self() RETURNS trigger AS $$
BEGIN
  NEW.terms_version := meterkit_terms_stamp();
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;
"""


def _pg_triggers() -> list[str]:
    out = []
    for owner, columns in (("tenant", TENANT_TERMS), ("organization", ORGANIZATION_TERMS)):
        out.append(
            f"CREATE TRIGGER {owner}_terms BEFORE INSERT OR UPDATE OF {columns} ON {owner} "
            "FOR EACH ROW EXECUTE FUNCTION meterkit_terms_self()"
        )
    for table, targets in BUMPS.items():
        for owner, _column in targets:
            out.append(
                f"CREATE TRIGGER {table}_terms_{owner} AFTER INSERT OR UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION meterkit_terms_of_{owner}()"
            )
    return out


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for owner in ("tenant", "organization"):
        op.add_column(owner, sa.Column("terms_version", sa.BigInteger(), nullable=False, server_default="0"))
    if sqlite:
        for statement in _sqlite_triggers():
            op.execute(statement)
        # Rows made before: a version of their own too (the default 0 is every row's).
        op.execute(f"UPDATE tenant SET terms_version = {SQLITE_STAMP}")
        op.execute(f"UPDATE organization SET terms_version = {SQLITE_STAMP}")
    else:
        op.execute(PG_FUNCTIONS)
        for owner in ("organization", "tenant"):
            op.execute(_PG_OF_OWNER.format(owner=owner, column=f"{owner}_id"))
        for statement in _pg_triggers():
            op.execute(statement)
        op.execute("UPDATE tenant SET terms_version = meterkit_terms_stamp()")
        op.execute("UPDATE organization SET terms_version = meterkit_terms_stamp()")


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        for owner in ("tenant", "organization"):
            op.execute(f"DROP TRIGGER IF EXISTS {owner}_terms_insert")
            op.execute(f"DROP TRIGGER IF EXISTS {owner}_terms_update")
        for table in BUMPS:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_terms_{event}")
    else:
        for owner in ("tenant", "organization"):
            op.execute(f"DROP TRIGGER IF EXISTS {owner}_terms ON {owner}")
        for table, targets in BUMPS.items():
            for owner, _column in targets:
                op.execute(f"DROP TRIGGER IF EXISTS {table}_terms_{owner} ON {table}")
        for function in ("meterkit_terms_self", "meterkit_terms_of_organization", "meterkit_terms_of_tenant"):
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
        op.execute("DROP FUNCTION IF EXISTS meterkit_terms_stamp()")
    for owner in ("tenant", "organization"):
        with op.batch_alter_table(owner) as batch:
            batch.drop_column("terms_version")
