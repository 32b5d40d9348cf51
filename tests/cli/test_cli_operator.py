"""The operator's catalog, audit and webhook commands end to end (issue 22, item 4): `meterkit
primitive|kits|plans ...`, `meterkit audit` and `meterkit webhooks ...` run as subprocesses against
a live gateway (uvicorn, SQLite and PostgreSQL) with an operator key, over GraphQL: --json parsed
and asserted, tables for people, a refusal exits 1 with the typed error's code, message and field,
no key exits 2, no gateway exits 3."""

from __future__ import annotations

import re
import shlex
from datetime import timedelta
from decimal import Decimal

from app.bootstrap import load_demo_catalog
from app.core.clock import Clock
from app.core.db import unit_of_work
from tests.alerts.test_alerts import _cross, _endpoint, _round, quota_tenant, receiver
from tests.cli.harness import Gateway, meterkit
from tests.conftest import count_rows
from tests.fixtures_catalog import SET_SUB
from tests.live import free_port
from tests.paths import ROOT

CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename
  ... on Charged { creditsUsed usage { primitive used quota } } ... on NotEntitled { primitive kit } } }"""


def test_primitives_kits_and_plans_from_the_cli(gateway: Gateway) -> None:
    op = gateway.op

    made = op(
        "primitive",
        "upsert",
        "vault.read",
        "--name",
        "Vault read",
        "--unit",
        "read",
        "--category",
        "vault",
        "--credits",
        "0.25",
        "--json",
    )
    assert made.code == 0, made.err
    p = made.json()
    assert (p["key"], p["name"], p["unit"], p["category"], p["pricingRule"], p["active"]) == (
        "vault.read",
        "Vault read",
        "read",
        "vault",
        "fixed",
        True,
    )
    assert op("primitive", "upsert", "vault.read", "--name", "Vault read", "--credits", "0.25").out.strip() == (
        "vault.read: fixed, active"
    )

    # Refused by the gateway: a new fixed primitive needs its price. Exit 1, the typed error, nothing written.
    before = count_rows(gateway.db.engine, "primitive", "audit_log")
    refused = op("primitive", "upsert", "apps.install", "--name", "Install", "--json")
    assert refused.code == 1 and refused.json()["error"]["code"] == "VALIDATION_FAILED", refused.out
    assert refused.json()["error"]["field"] == "credits" and "credits" in refused.json()["error"]["message"]
    human = op("primitive", "upsert", "apps.install", "--name", "Install")
    assert human.code == 1 and human.out == "" and human.err.startswith("VALIDATION_FAILED (credits): "), human.err
    assert count_rows(gateway.db.engine, "primitive", "audit_log") == before
    # A usage error is caught before anything is sent: exit 2.
    assert op("primitive", "upsert", "x.y", "--name", "X", "--credits", "lots").code == 2
    assert op("primitive", "upsert", "x.y", "--name", "X", "--rule", "by_the_moon").code == 2

    # Retire one; the list with and without retired primitives.
    retired = op("primitive", "upsert", "vault.read", "--name", "Vault read", "--no-active", "--json")
    assert retired.code == 0 and retired.json()["active"] is False
    every = {r["key"]: r["active"] for r in op("primitive", "list", "--json").json()}
    assert every["vault.read"] is False and "apps.install" not in every
    assert "vault.read" not in {r["key"] for r in op("primitive", "list", "--no-retired", "--json").json()}
    table = op("primitive", "list")
    lines = table.out.splitlines()
    assert table.code == 0 and any(line.startswith("vault.read") and "retired" in line for line in lines)
    assert op("primitive", "upsert", "vault.read", "--name", "Vault read", "--json").json()["active"] is True

    # A kit: repeated --primitive, --connection and --limit (either number may be left out).
    kit = op(
        "kits",
        "upsert",
        "kit_vault",
        "--name",
        "Vault",
        "--primitive",
        "email.*",
        "--primitive",
        "vault.read",
        "--connection",
        "gmail",
        "--limit",
        "email.send:50:120",
        "--limit",
        "vault.read::10",
        "--json",
    )
    assert kit.code == 0, kit.err
    k = kit.json()
    assert k["allowedPrimitives"] == ["email.*", "vault.read"] and k["allowedConnections"] == ["gmail"]
    assert k["limits"] == [
        {"primitive": "email.send", "maxQuantityPerCall": 50, "callsPerMinute": 120},
        {"primitive": "vault.read", "maxQuantityPerCall": None, "callsPerMinute": 10},
    ]
    assert "vault.read" in op("kits", "show", "kit_vault").out
    bad_limit = op(
        "kits", "upsert", "kit_vault", "--name", "V", "--primitive", "vault.read", "--limit", "vault.read:0", "--json"
    )
    assert bad_limit.code == 1 and bad_limit.json()["error"]["field"] == "limits.maxQuantityPerCall", bad_limit.out
    for malformed in ("vault.read", "vault.read:many", ":5", "vault.read:1:2:3"):
        usage = op("kits", "upsert", "kit_vault", "--name", "V", "--primitive", "vault.read", "--limit", malformed)
        assert usage.code == 2 and "--limit" in usage.err, (malformed, usage.err)
    assert op("kits", "show", "kit_vault", "--json").json()["limits"] == k["limits"]  # the refusals changed nothing

    # A plan: --quota repeated, the Stripe price and the credits each period.
    plan = op(
        "plans",
        "upsert",
        "vault",
        "--name",
        "Vault",
        "--kit",
        "kit_vault",
        "--quota",
        "vault.read=10",
        "--quota",
        "email.send=2000",
        "--stripe-price",
        "price_vault",
        "--included-credits",
        "100",
        "--json",
    )
    assert plan.code == 0, plan.err
    pl = plan.json()
    assert (pl["key"], pl["accountKitId"], pl["stripePriceId"], pl["period"], pl["overage"]) == (
        "vault",
        "kit_vault",
        "price_vault",
        "month",
        "refuse",
    )
    assert Decimal(pl["includedCredits"]) == 100
    assert {q["primitive"]: q["quota"] for q in pl["quotas"]} == {"vault.read": 10, "email.send": 2000}
    assert "quota vault.read" in op("plans", "show", "vault").out
    no_kit = op("plans", "upsert", "vault2", "--name", "V", "--kit", "kit_nope", "--json")
    assert no_kit.code == 1 and no_kit.json()["error"]["code"] == "NOT_FOUND", no_kit.out
    assert op("plans", "upsert", "v", "--name", "V", "--kit", "kit_vault", "--quota", "vault.read").code == 2
    assert op("plans", "upsert", "v", "--name", "V", "--kit", "kit_vault", "--included-credits", "x").code == 2
    assert op("plans", "upsert", "v", "--name", "V", "--kit", "kit_vault", "--overage", "maybe").code == 2

    # What the CLI wrote is the catalog the metered calls use.
    api = gateway.api
    tid = api.create_tenant("Vaulted")
    assert api(SET_SUB, {"t": tid, "i": {"planKey": "vault"}})["setSubscription"]["__typename"] == "SubscriptionChanged"
    charged = api(CHARGE, {"i": {"primitive": "vault.read", "idempotencyKey": "v1"}}, key=api.tenant_key(tid))
    assert charged["charge"]["__typename"] == "Charged", charged
    assert charged["charge"]["creditsUsed"] == "0.25" and charged["charge"]["usage"]["quota"] == 10


def test_the_audit_log_from_the_cli(gateway: Gateway) -> None:
    op = gateway.op
    assert op("primitive", "upsert", "vault.read", "--name", "Vault", "--credits", "1").code == 0
    assert op("kits", "upsert", "kit_a", "--name", "A", "--primitive", "vault.read").code == 0
    assert op("plans", "upsert", "plan_a", "--name", "A", "--kit", "kit_a").code == 0
    tenant = op("tenants", "create", "Audited", "--json").json()["id"]

    # The CLI's writes go through GraphQL: each entry names the key that made it.
    entry = op("audit", "--entity", "primitive", "--entity-key", "vault.read", "--json")
    assert entry.code == 0, entry.err
    [row] = entry.json()["nodes"]
    assert (row["actorKeyId"], row["actorRole"], row["action"], row["entityId"]) == (
        gateway.operator_key_id,
        "operator",
        "upsertPrimitive",
        "vault.read",
    )
    assert row["before"] is None and row["after"]["key"] == "vault.read" and row["detail"] == {"credits": 1_000_000}
    assert {n["actorKeyId"] for n in op("audit", "--json").json()["nodes"]} == {gateway.operator_key_id}

    # Newest first, paged by --limit and --after.
    first = op("audit", "--limit", "2", "--json").json()
    assert [n["action"] for n in first["nodes"]] == ["createTenant", "upsertPlan"]
    assert first["pageInfo"]["hasNextPage"] is True
    rest = op("audit", "--limit", "10", "--after", first["pageInfo"]["endCursor"], "--json").json()
    assert [n["action"] for n in rest["nodes"]] == ["upsertAccountKit", "upsertPrimitive"]
    assert rest["pageInfo"]["hasNextPage"] is False

    # The filters.
    assert [n["entityId"] for n in op("audit", "--action", "upsertPlan", "--json").json()["nodes"]] == ["plan_a"]
    assert [n["action"] for n in op("audit", "--tenant", tenant, "--json").json()["nodes"]] == ["createTenant"]
    by_key = op("audit", "--actor", gateway.operator_key_id, "--json").json()["nodes"]
    assert len(by_key) == 4
    now = gateway.clock.now()
    later, earlier = (now + timedelta(seconds=1)).isoformat(), (now - timedelta(seconds=1)).isoformat()
    assert len(op("audit", "--since", earlier, "--until", later, "--json").json()["nodes"]) == 4
    assert op("audit", "--since", later, "--json").json()["nodes"] == []
    assert op("audit", "--until", earlier, "--json").json()["nodes"] == []
    assert len(op("audit", "--since", now.date().isoformat(), "--json").json()["nodes"]) == 4  # a date: UTC midnight

    human = op("audit", "--limit", "1")
    assert human.code == 0 and "createTenant" in human.out and tenant in human.out and "more: --after" in human.out

    # Refusals: exit 1 with the typed error's field; a date that is not one is a usage error.
    bad = op("audit", "--tenant", "nope", "--json")
    assert bad.code == 1 and bad.json()["error"] == {
        "code": "VALIDATION_FAILED",
        "message": bad.json()["error"]["message"],
        "field": "tenantId",
    }
    assert op("audit", "--limit", "0", "--json").json()["error"]["field"] == "first"
    assert op("audit", "--after", "not-a-cursor", "--json").json()["error"]["field"] == "after"
    not_a_date = op("audit", "--since", "yesterday")
    assert not_a_date.code == 2 and "--since" in not_a_date.err


def test_webhook_endpoints_deliveries_and_replay_from_the_cli(gateway: Gateway) -> None:
    op = gateway.op
    tid, key = quota_tenant(gateway.api, quota=2)
    with receiver() as r:
        eid, _ = _endpoint(gateway.api, r.url)
        _cross(gateway.api, key)  # 1 of 2: the 50% threshold
        r.fail_next = 1
        assert _round(gateway.db, gateway.clock) == 1  # one attempt, answered 503

        listed = op("webhooks", "endpoints", "--json")
        assert listed.code == 0, listed.err
        [ep] = listed.json()
        assert (ep["id"], ep["tenantId"], ep["active"], ep["consecutiveFailures"]) == (eid, None, True, 1)
        assert ep["eventTypes"] == ["quota.threshold"] and ep["url"] == r.url
        assert eid in op("webhooks", "endpoints").out

        log = op("webhooks", "deliveries", eid, "--json")
        assert log.code == 0, log.err
        [delivery] = log.json()
        assert delivery["status"] == "pending" and [a["statusCode"] for a in delivery["attempts"]] == [503]
        human = op("webhooks", "deliveries", eid)
        assert human.code == 0 and "pending" in human.out and "503" in human.out

        # Replay: due now, so the next round sends it without waiting out the backoff.
        replayed = op("webhooks", "replay", delivery["id"], "--json")
        assert replayed.code == 0, replayed.err
        assert replayed.json()["id"] == delivery["id"] and replayed.json()["status"] == "pending"
        assert replayed.json()["nextAttemptAt"] == gateway.clock.now().isoformat().replace("+00:00", "Z")
        assert _round(gateway.db, gateway.clock) == 1
        after = op("webhooks", "deliveries", eid, "--json").json()[0]
        assert after["status"] == "delivered" and [a["statusCode"] for a in after["attempts"]] == [503, 200]
        assert len(r.seen) == 2

        missing = op("webhooks", "replay", "999999", "--json")
        assert missing.code == 1 and missing.json()["error"]["code"] == "NOT_FOUND"
        not_an_id = op("webhooks", "replay", "abc", "--json")
        assert not_an_id.code == 1 and not_an_id.json()["error"]["field"] == "id"
        bad_endpoint = op("webhooks", "deliveries", "nope")
        assert bad_endpoint.code == 1 and bad_endpoint.err.startswith("VALIDATION_FAILED (endpointId): ")
    assert tid  # the tenant whose usage crossed the threshold


NEW_COMMANDS = [
    ["primitive", "list"],
    ["primitive", "upsert", "vault.read", "--name", "V", "--credits", "1"],
    ["kits", "upsert", "kit_x", "--name", "X", "--primitive", "email.send"],
    ["plans", "upsert", "plan_x", "--name", "X", "--kit", "kit_x"],
    ["audit"],
    ["webhooks", "endpoints"],
    ["webhooks", "deliveries", "whe_0123456789abcdef0123456789abcdef"],
    ["webhooks", "replay", "1"],
]


def test_exit_codes_of_the_operator_commands(gateway: Gateway) -> None:
    tenant_key = gateway.api.tenant_key(gateway.api.create_tenant("T"))
    nowhere = f"http://127.0.0.1:{free_port()}"
    for args in NEW_COMMANDS:
        # A tenant key on an operator command (a tenant may read the primitives and list its own endpoints).
        if args not in (["primitive", "list"], ["webhooks", "endpoints"]):
            forbidden = meterkit(*args, "--json", url=gateway.url, key=tenant_key)
            assert forbidden.code == 1 and forbidden.json()["error"]["code"] == "FORBIDDEN", (args, forbidden.out)
        no_key = meterkit(*args, url=gateway.url, key=None)
        assert no_key.code == 2 and "METERKIT_API_KEY" in no_key.err, (args, no_key.err)
        unreachable = meterkit(*args, "--json", url=nowhere, key=gateway.api.operator_key)
        assert unreachable.code == 3 and unreachable.json()["error"]["code"] == "UNREACHABLE", (args, unreachable.out)


def test_the_catalog_docs_command_line_example_runs_as_written(gateway: Gateway) -> None:
    """docs/catalog.md's "From the command line", each line as a user would paste it, then the
    story it tells: a starter tenant may not issue cards, a pro tenant may, 10 a month at 2 credits.
    It runs on the demo catalog `make run` loads, whose pro plan and kit it extends, never wipes."""
    with unit_of_work(gateway.api.db.engine) as s:
        load_demo_catalog(s, Clock())
    text = (ROOT / "docs" / "catalog.md").read_text()
    section = text[text.index("## From the command line") :]
    block = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 6 and all(line.startswith("meterkit ") for line in lines), lines
    for line in lines:
        run = gateway.op(*shlex.split(line)[1:])
        assert run.code == 0, (line, run.err)
    assert "cards.issue" in run.out  # the last line: primitive list
    api = gateway.api
    starter, pro = api.create_tenant("S"), api.create_tenant("P")
    api(SET_SUB, {"t": starter, "i": {"planKey": "starter"}})
    api(SET_SUB, {"t": pro, "i": {"planKey": "pro"}})
    card = {"i": {"primitive": "cards.issue", "idempotencyKey": "card-1"}}
    refused = api(CHARGE, card, key=api.tenant_key(starter))["charge"]
    assert refused == {"__typename": "NotEntitled", "primitive": "cards.issue", "kit": "kit_starter"}
    charged = api(CHARGE, card, key=api.tenant_key(pro))["charge"]
    assert charged["creditsUsed"] == "2" and charged["usage"]["used"] == 1 and charged["usage"]["quota"] == 10
    # The demo's pro keeps its price and other quotas, kit_pro its patterns and connections.
    shown = gateway.op("plans", "show", "pro", "--json").json()
    assert shown["stripePriceId"] == "price_pro_monthly"
    assert {q["primitive"]: q["quota"] for q in shown["quotas"]} == {
        "cards.issue": 10,
        "email.send": 1000,
        "search.web": 5000,
    }
    kit = gateway.op("kits", "show", "kit_pro", "--json").json()
    assert len(kit["allowedPrimitives"]) == 11 and kit["allowedConnections"] == ["github", "gmail", "slack"]
