"""How meterkit's tables map onto a sharded PostgreSQL (Citus), and the rules that keep them mappable.

The distribution column is the tenant id (for the `tenant` table, its `id`): every hot row is keyed
by it and every statement of the metered call already filters on it, so each routes to the one
shard that holds that tenant. An organization's own account is its house tenant, whose id is the
organization's id, so a call its organization pays for writes two distribution values in one
transaction (the end user's rows, then the organization's account: docs/operations/scaling-out.md
says what that costs and what would make it one). Catalog tables are reference tables, copied to
every node, so the charge's joins to them stay local. Tables the workers and the Stripe inbox own
stay on the coordinator (`LOCAL`).

The rules (what Citus needs for keys and foreign keys to hold on every node):
- every table is classified, exactly once;
- a distributed table's distribution column exists and is NOT NULL;
- its primary key, and each unique constraint or unique index, include that column;
- a foreign key between distributed tables pairs the two distribution columns;
- a foreign key from a reference or local table to a distributed one does not exist (distributed
  -> reference, local -> reference and reference -> reference are fine).

`GAPS` lists, with a reason each, where the schema breaks a rule today; tests/core/
test_distribution_invariants.py checks the migrated schema on both engines against the rules and
fails on any violation not listed here, and on any listed one that no longer occurs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# table -> its distribution column. All colocated: the same value (a tenant id) lands on one shard.
DISTRIBUTED: dict[str, str] = {
    "tenant": "id",
    "credit_account": "tenant_id",
    "credit_bucket": "tenant_id",
    "ledger_entry": "tenant_id",
    "credit_hold": "tenant_id",
    "credit_reversal": "tenant_id",
    "usage_event": "tenant_id",
    "usage_counter": "tenant_id",
    "usage_rollup": "tenant_id",
    "rate_window": "tenant_id",
    "billing_period": "tenant_id",
    "subscription": "tenant_id",
    "key_budget": "tenant_id",
    "key_budget_usage": "tenant_id",
    "llm_call": "tenant_id",
    "overage_report": "tenant_id",
    "stripe_operation": "tenant_id",
    "alert_event": "tenant_id",
}

# Replicated to every node: read by the hot path, written by management calls only.
REFERENCE: frozenset[str] = frozenset(
    {
        # The platform's catalog.
        "primitive",
        "price",
        "llm_rate",
        "media_price",
        "pricing_setting",
        "credit_pack",
        "platform_tier",
        "server_secret",
        # Each organization's catalog and settings: the charge joins them by organization id.
        "organization",
        "organization_stripe",
        "account_kit",
        "plan",
        "plan_quota",
        "plan_version",
        "alert_policy",
        # Authentication reads a key by its hash before it knows the tenant (so before the shard).
        "api_key",
    }
)

# On the coordinator only: the alert delivery worker's tables, the Stripe inbox, the audit log.
LOCAL: frozenset[str] = frozenset(
    {"webhook_endpoint", "webhook_delivery", "webhook_attempt", "stripe_event", "audit_log", "alembic_version"}
)

# SQLite numbers rows only through a single INTEGER PRIMARY KEY (the rowid alias), and it is never
# distributed: there these keep `id` alone as their key; PostgreSQL's is (tenant_id, id) (migration 0024).
SQLITE_ROWID_KEYS: frozenset[str] = frozenset({"usage_event", "ledger_entry", "llm_call"})

# (table, rule, detail) -> why the schema breaks the rule today. Rules: "unclassified",
# "column" (missing or nullable), "primary_key", "unique" (detail: the columns), "foreign_key"
# (detail: "cols -> table(cols)").
GAPS: dict[tuple[str, str, str], str] = {
    ("tenant", "unique", "organization_id,external_id"): (
        "an external id is unique per organization, across tenants: needs a lookup table keyed by "
        "(organization_id, external_id) on the coordinator or distributed by organization"
    ),
    ("tenant", "unique", "organization_id,stripe_customer_id"): (
        "a Stripe customer is unique per organization, across tenants: same fix as the external id"
    ),
    ("key_budget", "primary_key", "api_key_id"): (
        "keyed by the key; the charge reads it with tenant_id too, but setKeyBudget/clearKeyBudget "
        "(app/budgets/service.py) get it by the key id alone"
    ),
    ("key_budget_usage", "primary_key", "api_key_id,period_start,primitive"): (
        "keyed by the key: app/budgets/enforce.py's upserts name ON CONFLICT (api_key_id, period_start, "
        "primitive) and its reads filter on api_key_id only: those statements change with the key"
    ),
    ("overage_report", "unique", "identifier"): (
        "Stripe's meter-event identifier, unique across the install: derived from (tenant, period, "
        "primitive), so (tenant_id, identifier) would do once the reporter's conflict target names it"
    ),
    ("stripe_operation", "primary_key", "id"): (
        "found by its id alone when Stripe answers (app/integrations/stripe/repository.py get): not on the metered path"
    ),
    ("alert_event", "column", "tenant_id"): (
        "NULL for an alert that concerns no tenant (an operator endpoint disabled): such rows belong on "
        "the coordinator, in a table of their own"
    ),
    ("alert_event", "primary_key", "id"): (
        "the outbox is read in id order by the delivery worker across tenants, and webhook_delivery refers to it by id"
    ),
    ("alert_policy", "foreign_key", "tenant_id -> tenant(id)"): (
        "a reference table may not refer to a distributed one: a tenant's own policy would move into a "
        "table distributed by tenant_id"
    ),
    ("api_key", "foreign_key", "tenant_id -> tenant(id)"): (
        "a reference table may not refer to a distributed one: the end user's key names its tenant; the "
        "check would move to the application (keys are never deleted)"
    ),
    ("webhook_endpoint", "foreign_key", "tenant_id -> tenant(id)"): (
        "a coordinator table may not refer to a distributed one: a tenant's endpoint names its tenant"
    ),
    ("webhook_delivery", "foreign_key", "tenant_id -> tenant(id)"): "as webhook_endpoint",
    ("webhook_delivery", "foreign_key", "event_id -> alert_event(id)"): (
        "a coordinator table may not refer to a distributed one: goes with alert_event's key"
    ),
    ("webhook_attempt", "foreign_key", "tenant_id -> tenant(id)"): "as webhook_endpoint",
    ("stripe_event", "foreign_key", "tenant_id -> tenant(id)"): (
        "the inbox is unique by Stripe's event id across the install, so it stays on the coordinator; "
        "the tenant it names is for operators"
    ),
}


def kind_of(table: str) -> str:
    if table in DISTRIBUTED:
        return "distributed"
    if table in REFERENCE:
        return "reference"
    if table in LOCAL:
        return "local"
    return "unclassified"


@dataclass(frozen=True)
class TableShape:
    """What the rules read of one table, from a live database or from the models."""

    name: str
    nullable: dict[str, bool]  # column -> nullable
    primary_key: tuple[str, ...]
    uniques: tuple[tuple[str, ...], ...]  # unique constraints and unique indexes
    foreign_keys: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...]  # (cols, table, referred cols)


def shape_from_inspector(inspector: Any, table: str) -> TableShape:
    """A table's shape as SQLAlchemy's inspector reflects it from the database."""
    uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)}
    uniques |= {tuple(i["column_names"]) for i in inspector.get_indexes(table) if i["unique"]}
    return TableShape(
        name=table,
        nullable={c["name"]: bool(c["nullable"]) for c in inspector.get_columns(table)},
        primary_key=tuple(inspector.get_pk_constraint(table)["constrained_columns"]),
        uniques=tuple(sorted(uniques)),
        foreign_keys=tuple(
            sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in inspector.get_foreign_keys(table)
            )
        ),
    )


def violations(tables: list[TableShape], *, sqlite: bool = False) -> set[tuple[str, str, str]]:
    """Every (table, rule, detail) the shapes break; see the module docstring for the rules."""
    found: set[tuple[str, str, str]] = set()
    for t in tables:
        kind = kind_of(t.name)
        if kind == "unclassified":
            found.add((t.name, "unclassified", ""))
            continue
        if kind == "distributed":
            col = DISTRIBUTED[t.name]
            if t.nullable.get(col, True):
                found.add((t.name, "column", col))
            rowid = sqlite and t.name in SQLITE_ROWID_KEYS and t.primary_key == ("id",)
            if col not in t.primary_key and not rowid:
                found.add((t.name, "primary_key", ",".join(t.primary_key)))
            for cols in t.uniques:
                if col not in cols:
                    found.add((t.name, "unique", ",".join(cols)))
        for cols, target, referred in t.foreign_keys:
            target_kind = kind_of(target)
            detail = f"{','.join(cols)} -> {target}({','.join(referred)})"
            if target_kind == "distributed":
                if kind != "distributed":
                    found.add((t.name, "foreign_key", detail))
                    continue
                pairs = set(zip(cols, referred, strict=True))
                if (DISTRIBUTED[t.name], DISTRIBUTED[target]) not in pairs:
                    found.add((t.name, "foreign_key", detail))
            elif target_kind == "local" and kind != "local":
                found.add((t.name, "foreign_key", detail))
    return found
