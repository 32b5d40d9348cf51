"""The schema stays mappable onto a sharded PostgreSQL (Citus) distributed by tenant id, on SQLite and
PostgreSQL (app/core/distribution.py holds the classification and the rules).

1. The migrated schema, reflected: every table classified; the distribution column NOT NULL and in
   every primary and unique key of a distributed table; foreign keys only where Citus can keep them.
   Any violation not in distribution.GAPS fails, and so does a gap that no longer occurs (remove it).
2. The models declare the primary keys the database has (Alembic's drift check does not compare
   primary keys).
3. The hot path, run for real (a charge, a reserve and its settle, a chargeBatch, for an end user
   whose organization pays, and for the organization's own agents) with every statement captured:
   each statement that reads or writes a distributed table names exactly one tenant id, and the
   distribution column of every distributed table it names; no statement writes a reference table;
   one call touches at most two tenant ids, the end user and its organization (the house account).
   The statements that break this are listed in KNOWN_UNROUTED with why; the test fails on any other.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import inspect
from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers every table)
from app.core import distribution
from app.core.distribution import DISTRIBUTED, REFERENCE, violations
from tests.conftest import Api, Database
from tests.organizations.test_organization_holds import CHARGE, RESERVE, SETTLE, _org, _user
from tests.sql_capture import captured_statements


def _shapes(db: Database) -> list[distribution.TableShape]:
    inspector = inspect(db.engine)
    return [distribution.shape_from_inspector(inspector, t) for t in sorted(inspector.get_table_names())]


def test_the_schema_keeps_the_distribution_rules(db: Database) -> None:
    shapes = _shapes(db)
    found = violations(shapes, sqlite=db.backend == "sqlite")
    known = set(distribution.GAPS)
    assert found - known == set(), f"new violations of the distribution rules on {db.backend}: {found - known}"
    assert known - found == set(), f"listed in distribution.GAPS but no longer violated: {known - found}"
    # Every class names real tables only (a renamed table must be reclassified, not forgotten).
    names = {s.name for s in shapes}
    assert set(DISTRIBUTED) | REFERENCE <= names
    assert all(DISTRIBUTED[t] in s.nullable for s in shapes if (t := s.name) in DISTRIBUTED)


def test_the_rules_catch_what_they_name() -> None:
    """The checker itself: each rule fires on a table built to break it."""
    bad = [
        distribution.TableShape("mystery", {"id": False}, ("id",), (), ()),
        distribution.TableShape(
            "usage_event",
            {"id": False, "tenant_id": True},
            ("id",),
            (("idempotency_key",),),
            ((("id",), "credit_hold", ("id",)),),
        ),
        distribution.TableShape("plan", {"key": False}, ("key",), (), ((("tenant_id",), "tenant", ("id",)),)),
    ]
    assert violations(bad) == {
        ("mystery", "unclassified", ""),
        ("usage_event", "column", "tenant_id"),
        ("usage_event", "primary_key", "id"),
        ("usage_event", "unique", "idempotency_key"),
        ("usage_event", "foreign_key", "id -> credit_hold(id)"),
        ("plan", "foreign_key", "tenant_id -> tenant(id)"),
    }
    # SQLite's rowid key is accepted there only, and only for the tables that need it.
    assert ("usage_event", "primary_key", "id") not in violations(bad, sqlite=True)


def test_the_models_declare_the_primary_keys_the_database_has(db: Database) -> None:
    inspector = inspect(db.engine)
    for name, table in SQLModel.metadata.tables.items():
        declared = [c.name for c in table.primary_key.columns]
        reflected = inspector.get_pk_constraint(name)["constrained_columns"]
        if db.backend == "sqlite" and name in distribution.SQLITE_ROWID_KEYS:
            assert reflected == ["id"] and declared == ["tenant_id", "id"], name
            continue
        assert reflected == declared, f"{name} on {db.backend}: database {reflected}, model {declared}"


# Statements of the hot path that do not route to one tenant's shard today, by a fragment of their
# text, with why (each would change with its module; see docs/operations/scaling-out.md).
KNOWN_UNROUTED: dict[str, str] = {
    "FROM credit_hold WHERE payer_id": (
        "app/metering/payer.py _FREED (and _AVAILABLE): the organization sums its end users' open holds "
        "past expiry by payer_id, across its end users' shards; a per-payer sum kept on the organization's "
        "account row (or holds distributed by the payer) would make it one"
    ),
}

_TABLE_REF = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE)\s+\"?(\w+)\"?(?:\s+(?:AS\s+)?(\w+))?", re.IGNORECASE)
_WRITE = re.compile(r"^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?(\w+)", re.IGNORECASE)
_KEYWORDS = {"on", "where", "join", "left", "set", "values", "order", "limit", "group", "using", "inner", "for"}


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list | tuple):
        return "ARRAY[" + ", ".join(_literal(v) for v in value) + "]"
    return "NULL" if value is None else str(value)


def _expanded(statement: str, parameters: Any) -> list[str]:
    """The statement with its values in place, as SQLite's trace gives it (one per parameter set)."""
    if parameters is None:
        return [statement]
    if isinstance(parameters, list) and parameters and isinstance(parameters[0], dict | list | tuple):
        return [text for p in parameters for text in _expanded(statement, p)]
    if isinstance(parameters, dict):
        return [re.sub(r"%\((\w+)\)s", lambda m: _literal(parameters[m.group(1)]), statement)]
    values = iter(parameters)
    return [re.sub(r"%s", lambda m: _literal(next(values)), statement)]


def _split(values: str) -> list[str]:
    """Top-level comma-separated items of a VALUES row (quotes and parentheses respected)."""
    out, depth, quoted, cur = [], 0, False, ""
    for ch in values:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "([":
            depth += 1
        elif not quoted and ch in ")]":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    return out


def _routing_values(flat: str, dist: list[tuple[str, str]]) -> tuple[set[str], list[str]]:
    """The values the statement binds to distribution columns, and the tables it names without one."""
    values: set[str] = set()
    missing: list[str] = []
    insert = re.match(r"INSERT INTO (\w+) \(([^)]*)\) VALUES (.*?)(?: ON CONFLICT| RETURNING|$)", flat)
    for table, alias in dist:
        col = DISTRIBUTED[table]
        if insert and insert.group(1) == table:
            cols = [c.strip() for c in insert.group(2).split(",")]
            at = cols.index(col) if col in cols else -1
            rows = re.findall(r"\(((?:[^()']|'[^']*'|\([^()]*\))*)\)", insert.group(3))
            if at < 0 or not rows:
                missing.append(table)
            for row in rows:
                values.add(_split(row)[at].strip("'")) if at >= 0 else None
            continue
        qualifier = alias if alias and alias not in _KEYWORDS else table
        names = rf"(?:{re.escape(qualifier)}\.)?{col}" if col != "id" else rf"{re.escape(qualifier)}\.id"
        eq = re.findall(rf"(?<![\w.]){names}\s*=\s*'([^']*)'", flat)
        listed = r"(?:=\s*ANY\(ARRAY\[|IN \(SELECT value FROM json_each\(')([^\]\)]*)"
        many = re.findall(rf"(?<![\w.]){names}\s*{listed}", flat)
        joined = re.search(rf"(?<![\w.]){names}\s*=\s*\w+\.(?:tenant_id|id)\b", flat) or re.search(
            rf"\w+\.(?:tenant_id|id)\s*=\s*{names}\b", flat
        )
        values |= set(eq)
        for items in many:
            values |= set(re.findall(r'[\'"]([^\'"]+)[\'"]', items))
        if not (eq or many or joined):
            missing.append(table)
    return values, missing


def _problems(seen: list[tuple[str, Any]], tenants: set[str]) -> tuple[list[str], set[str]]:
    """What breaks the statement rules, and every tenant id the statements bound to a distribution column."""
    problems: list[str] = []
    touched: set[str] = set()
    for statement, parameters in seen:
        for flat in _expanded(" ".join(statement.split()), parameters):
            refs = [(m.group(1).lower(), (m.group(2) or "").lower()) for m in _TABLE_REF.finditer(flat)]
            dist = [(t, a) for t, a in refs if t in DISTRIBUTED]
            write = _WRITE.match(flat)
            if write and write.group(1).lower() in REFERENCE:
                problems.append(f"writes reference table {write.group(1)}: {flat[:160]}")
            if "meterkit_charge" in flat:  # PostgreSQL's one-statement charge: routed by its first argument
                first = re.search(r"meterkit_charge(?:_batch)?\('([^']*)'", flat)
                touched |= {first.group(1)} if first else set()
                continue
            if not dist:
                continue
            named, missing = _routing_values(flat, dist)
            touched |= named & tenants
            if any(fragment in flat for fragment in KNOWN_UNROUTED):
                continue
            if len(named) != 1:
                problems.append(f"binds {sorted(named)} to the distribution column: {flat[:200]}")
            for table in missing:
                problems.append(f"{table} without its {DISTRIBUTED[table]}: {flat[:200]}")
    return problems, touched


def _meter(api: Api, key: str, tenant: str | None, n: int) -> None:
    i = {"primitive": "email.send", "idempotencyKey": f"dist-{tenant}-{n}", "quantity": 1}
    assert api(CHARGE, {"i": i}, key=key, tenant=tenant)["charge"]["__typename"] == "Charged"


BATCH = "mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename } }"


def test_the_hot_path_routes_each_statement_to_one_tenant(api: Api) -> None:
    org, key = _org(api, "d")
    users = [_user(api, key, "d") for _ in range(2)]
    tenants = {org, *users}
    used_fragments: set[str] = set()

    def check(seen: list[tuple[str, Any]], allowed: set[str]) -> None:
        problems, touched = _problems(seen, tenants)
        assert problems == [], "\n".join(problems)
        assert touched and touched <= allowed, (touched, allowed)
        used_fragments.update(f for s, _ in seen for f in KNOWN_UNROUTED if f in " ".join(s.split()))

    # An end user's charge, paid by its organization (wallets off: the default of a new organization).
    with captured_statements(api.db) as seen:
        _meter(api, key, users[0], 1)
    check(seen, {users[0], org})
    assert org in _problems(seen, tenants)[1], "the organization's account was not charged"
    # The organization's own agents: its house account only.
    with captured_statements(api.db) as seen:
        _meter(api, key, None, 2)
    check(seen, {org})
    # A reserve and its settle.
    with captured_statements(api.db) as seen:
        i = {"primitive": "research.thorough", "idempotencyKey": "dist-hold", "quantity": 1}
        hold = api(RESERVE, {"i": i, "ttl": 600}, key=key, tenant=users[0])["reserve"]
        assert hold["__typename"] == "Hold", hold
        done = api(SETTLE, {"h": hold["id"], "a": None}, key=key, tenant=users[0])["settle"]
        assert done["__typename"] == "Charged", done
    check(seen, {users[0], org})
    # A batch of one end user: one tenant and its payer.
    items = [{"item": {"primitive": "email.send", "idempotencyKey": f"dist-b-{n}"}} for n in range(3)]
    with captured_statements(api.db) as seen:
        out = api(BATCH, {"items": items}, key=key, tenant=users[1])["chargeBatch"]
        assert [r["__typename"] for r in out] == ["Charged"] * 3, out
    check(seen, {users[1], org})
    # Every listed exception still occurs (drop the ones that no longer do).
    assert used_fragments == set(KNOWN_UNROUTED), f"stale in KNOWN_UNROUTED: {set(KNOWN_UNROUTED) - used_fragments}"
