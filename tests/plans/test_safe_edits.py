"""Edits that cannot destroy by omission (issue 22, item 1): an upsert keeps what it does not name,
a removal needs confirm (else a typed error listing the changes, nothing written), a dry run answers
the diff, and a change of price, quotas or credits is a new plan version that current subscribers
reach only at renewal or by migratePlanSubscribers. The docs' catalog examples, run on the demo
catalog, leave `pro` and `kit_pro` intact but for what they set."""

from __future__ import annotations

import re
from typing import Any

from app.bootstrap import load_demo_catalog
from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from tests.conftest import ALL_TABLES, Api, count_rows
from tests.fixtures_catalog import SET_SUB
from tests.metering.test_metering_basic import CHARGE
from tests.paths import ROOT

PLAN_FIELDS = """key name stripePriceId period overage includedCredits archived accountKitId version
  quotas { primitive quota overagePriceId }"""
KIT_FIELDS = "key name allowedPrimitives allowedConnections limits { primitive maxQuantityPerCall callsPerMinute }"
CHANGES = "changes { field before after destructive reason }"
UPSERT_PLAN = f"""mutation($i: PlanInput!, $c: Boolean! = false, $d: Boolean! = false) {{
  upsertPlan(input: $i, confirm: $c, dryRun: $d) {{ __typename
    ... on Plan {{ {PLAN_FIELDS} }}
    ... on PlanPreview {{ plan {{ {PLAN_FIELDS} }} {CHANGES} created needsConfirm }}
    ... on ConfirmationRequiredError {{ code message {CHANGES} }}
    ... on UserError {{ code message }} }} }}"""
UPSERT_KIT = f"""mutation($i: AccountKitInput!, $c: Boolean! = false, $d: Boolean! = false) {{
  upsertAccountKit(input: $i, confirm: $c, dryRun: $d) {{ __typename
    ... on AccountKit {{ {KIT_FIELDS} }}
    ... on AccountKitPreview {{ kit {{ {KIT_FIELDS} }} {CHANGES} created needsConfirm }}
    ... on ConfirmationRequiredError {{ code message {CHANGES} }}
    ... on UserError {{ code message }} }} }}"""
READ = f'{{ plan(key: "pro") {{ {PLAN_FIELDS} }} accountKit(key: "kit_pro") {{ {KIT_FIELDS} }} }}'
USAGE = "{ viewer { usage { plan planVersion quotas { primitive quota used } } } }"
MIGRATE = """mutation($k: String!) { migratePlanSubscribers(key: $k) { __typename
  ... on PlanSubscribersMigrated { moved plan { version } } ... on UserError { code } } }"""


def _demo(api: Api, clock: FrozenClock) -> None:
    with unit_of_work(api.db.engine) as s:
        load_demo_catalog(s, clock)


def _catalog_example() -> str:
    """The GraphQL of docs/catalog.md's "Primitives as data" example, as a reader copies it."""
    text = (ROOT / "docs" / "catalog.md").read_text()
    section = text[text.index("## Primitives as data") : text.index("## From the command line")]
    blocks = re.findall(r"```graphql\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_the_docs_catalog_examples_leave_the_demo_plans_intact(api: Api, clock: FrozenClock) -> None:
    _demo(api, clock)
    before = api(READ)
    assert (
        before["plan"]["stripePriceId"] == "price_pro_monthly" and len(before["accountKit"]["allowedPrimitives"]) == 10
    )
    # "Primitives as data", as written.
    out = api(_catalog_example())
    assert {k: v["__typename"] for k, v in out.items()} == {
        "upsertPrimitive": "Primitive",
        "starterKit": "AccountKit",
        "proKit": "AccountKit",
        "starter": "Plan",
        "pro": "Plan",
    }
    # The product's documented plans.upsert call (no includedCredits): what it names, nothing else.
    brief = {
        "key": "pro",
        "name": "Pro",
        "stripePriceId": "price_1Pxyz",
        "accountKitId": "kit_pro",
        "quotas": [{"primitive": "email.send", "quota": 1000}, {"primitive": "search.web", "quota": 5000}],
        "period": "month",
    }
    res = api(UPSERT_PLAN, {"i": brief})["upsertPlan"]
    # It drops the cards.issue quota the docs example added: that takes confirm, and writes nothing.
    assert res["__typename"] == "ConfirmationRequiredError"
    assert [c["field"] for c in res["changes"] if c["destructive"]] == ["quotas.cards.issue"]
    assert api(READ)["plan"]["stripePriceId"] == "price_pro_monthly"
    assert api(UPSERT_PLAN, {"i": brief, "c": True})["upsertPlan"]["__typename"] == "Plan"

    after = api(READ)
    plan, kit = dict(before["plan"]), dict(before["accountKit"])
    plan["stripePriceId"] = "price_1Pxyz"  # that call set it
    assert {**after["plan"], "version": None} == {**plan, "version": None}
    assert after["plan"]["version"] == 3  # the docs' quota, then that call's price and quotas
    kit["allowedPrimitives"] = sorted([*kit["allowedPrimitives"], "cards.*"])  # the docs' proKit added it
    assert after["accountKit"] == kit


def test_an_omitted_field_keeps_its_value_and_null_clears_it(api: Api, clock: FrozenClock) -> None:
    _demo(api, clock)
    api(UPSERT_PLAN, {"i": {"key": "pro", "includedCredits": "200"}})
    before = api(READ)["plan"]
    renamed = api(UPSERT_PLAN, {"i": {"key": "pro", "name": "Pro Plus"}})["upsertPlan"]
    assert renamed == {
        **before,
        "__typename": "Plan",
        "name": "Pro Plus",
    }  # no new version: nothing a subscriber pays or gets
    cleared = api(UPSERT_PLAN, {"i": {"key": "pro", "stripePriceId": None}})["upsertPlan"]
    assert cleared["stripePriceId"] is None and cleared["quotas"] == before["quotas"]
    assert cleared["includedCredits"] == "200" and cleared["version"] == before["version"] + 1
    # A new plan needs its name and kit; null is not "keep".
    res = api(UPSERT_PLAN, {"i": {"key": "solo"}})["upsertPlan"]
    assert res["__typename"] == "ValidationError" and "name" in res["message"]
    res = api(UPSERT_PLAN, {"i": {"key": "pro", "name": None}})["upsertPlan"]
    assert res["__typename"] == "ValidationError"
    # A kit too: the name alone changes the name.
    kit = api(READ)["accountKit"]
    edited = api(UPSERT_KIT, {"i": {"key": "kit_pro", "name": "Pro kit"}})["upsertAccountKit"]
    assert edited == {**kit, "__typename": "AccountKit", "name": "Pro kit"}


def test_a_destructive_edit_needs_confirm_and_otherwise_writes_nothing(api: Api, clock: FrozenClock) -> None:
    _demo(api, clock)
    api(UPSERT_PLAN, {"i": {"key": "pro", "includedCredits": "200"}})
    before, rows = api(READ), count_rows(api.db.engine, *ALL_TABLES, "audit_log", "plan_version")
    cases: list[tuple[str, dict[str, Any], list[str]]] = [
        (UPSERT_PLAN, {"key": "pro", "quotas": [{"primitive": "email.send", "quota": 1000}]}, ["quotas.search.web"]),
        (UPSERT_PLAN, {"key": "pro", "removeQuotas": ["email.send"]}, ["quotas.email.send"]),
        (UPSERT_PLAN, {"key": "pro", "includedCredits": "50"}, ["includedCredits"]),
        (UPSERT_PLAN, {"key": "pro", "includedCredits": None}, ["includedCredits"]),
        (
            UPSERT_KIT,
            {"key": "kit_pro", "allowedPrimitives": ["email.*"]},
            [f"allowedPrimitives.{p}" for p in before["accountKit"]["allowedPrimitives"] if p != "email.*"],
        ),
        (UPSERT_KIT, {"key": "kit_pro", "removeAllowedPrimitives": ["llm.*"]}, ["allowedPrimitives.llm.*"]),
        (UPSERT_KIT, {"key": "kit_pro", "removeAllowedConnections": ["gmail"]}, ["allowedConnections.gmail"]),
        (
            UPSERT_KIT,
            {"key": "kit_pro", "allowedConnections": []},
            ["allowedConnections.github", "allowedConnections.gmail", "allowedConnections.slack"],
        ),
    ]
    for doc, edit, destructive in cases:
        res = next(iter(api(doc, {"i": edit}).values()))
        assert res["__typename"] == "ConfirmationRequiredError" and res["code"] == "CONFIRMATION_REQUIRED", res
        assert [c["field"] for c in res["changes"] if c["destructive"]] == destructive, res
        assert all(c["reason"] for c in res["changes"] if c["destructive"])
        assert "confirm: true" in res["message"]
    assert api(READ) == before
    assert count_rows(api.db.engine, *ALL_TABLES, "audit_log", "plan_version") == rows
    # Confirmed, each applies.
    res = api(UPSERT_PLAN, {"i": {"key": "pro", "removeQuotas": ["email.send"]}, "c": True})["upsertPlan"]
    assert res["quotas"] == [{"primitive": "search.web", "quota": 5000, "overagePriceId": None}]
    res = api(UPSERT_KIT, {"i": {"key": "kit_pro", "removeAllowedConnections": ["gmail"]}, "c": True})
    assert res["upsertAccountKit"]["allowedConnections"] == ["github", "slack"]


def test_a_price_change_needs_confirm_only_while_live_subscriptions_carry_the_price(
    api: Api, clock: FrozenClock
) -> None:
    _demo(api, clock)
    assert api(UPSERT_PLAN, {"i": {"key": "pro", "stripePriceId": "price_pro_2"}})["upsertPlan"]["__typename"] == "Plan"
    tid = api.create_tenant("Live")
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro", "status": "active"}})
    res = api(UPSERT_PLAN, {"i": {"key": "pro", "stripePriceId": "price_pro_3"}})["upsertPlan"]
    assert res["__typename"] == "ConfirmationRequiredError"
    assert res["changes"][0]["field"] == "stripePriceId" and "1 live subscription" in res["changes"][0]["reason"]
    # Moving subscribers to another kit takes confirm too.
    res = api(UPSERT_PLAN, {"i": {"key": "pro", "accountKitId": "kit_free"}})["upsertPlan"]
    assert res["__typename"] == "ConfirmationRequiredError" and res["changes"][0]["field"] == "accountKitId"


def test_a_dry_run_answers_the_would_be_plan_and_its_changes_and_writes_nothing(api: Api, clock: FrozenClock) -> None:
    _demo(api, clock)
    before, rows = api(READ), count_rows(api.db.engine, *ALL_TABLES, "audit_log", "plan_version")
    res = api(
        UPSERT_PLAN,
        {
            "i": {"key": "pro", "setQuotas": [{"primitive": "url.read", "quota": 9}], "removeQuotas": ["search.web"]},
            "d": True,
        },
    )["upsertPlan"]
    assert res["__typename"] == "PlanPreview" and res["needsConfirm"] is True and res["created"] is False
    assert [q["primitive"] for q in res["plan"]["quotas"]] == ["email.send", "url.read"]
    assert res["plan"]["version"] == before["plan"]["version"] + 1
    fields = {c["field"]: c for c in res["changes"]}
    assert fields["quotas.search.web"]["destructive"] and fields["quotas.search.web"]["before"] == "5000"
    assert fields["quotas.url.read"] == {
        "field": "quotas.url.read",
        "before": None,
        "after": "9",
        "destructive": False,
        "reason": None,
    }
    kit = api(UPSERT_KIT, {"i": {"key": "kit_pro", "addAllowedPrimitives": ["*"]}, "d": True})["upsertAccountKit"]
    assert kit["__typename"] == "AccountKitPreview" and kit["needsConfirm"] is False
    assert kit["kit"]["allowedPrimitives"][0] == "*" and kit["changes"][0]["field"] == "allowedPrimitives.*"
    bad = api(UPSERT_KIT, {"i": {"key": "kit_pro", "addAllowedPrimitives": ["cards.*"]}, "d": True})["upsertAccountKit"]
    assert bad["__typename"] == "ValidationError"  # a dry run validates as the write would
    new = api(UPSERT_PLAN, {"i": {"key": "team", "name": "Team", "accountKitId": "kit_pro"}, "d": True})["upsertPlan"]
    assert new["created"] is True and new["plan"]["version"] == 1 and new["changes"] == []
    assert api(READ) == before
    assert count_rows(api.db.engine, *ALL_TABLES, "audit_log", "plan_version") == rows


def test_subscribers_keep_their_version_until_renewal_or_migration(api: Api, clock: FrozenClock) -> None:
    _demo(api, clock)
    api(UPSERT_PLAN, {"i": {"key": "pro", "setQuotas": [{"primitive": "email.send", "quota": 2}]}})
    old = api.create_tenant("Old")
    api(SET_SUB, {"t": old, "i": {"planKey": "pro", "status": "active", "currentPeriodEnd": "2030-01-01T00:00:00Z"}})
    okey = api.tenant_key(old)
    v = api(READ)["plan"]["version"]
    assert api(USAGE, key=okey)["viewer"]["usage"]["planVersion"] == v
    # The quota goes up to 5: a new version; the old subscriber keeps 2.
    assert (
        api(UPSERT_PLAN, {"i": {"key": "pro", "setQuotas": [{"primitive": "email.send", "quota": 5}]}})["upsertPlan"][
            "version"
        ]
        == v + 1
    )
    new = api.create_tenant("New")
    api(SET_SUB, {"t": new, "i": {"planKey": "pro", "status": "active", "currentPeriodEnd": "2030-01-01T00:00:00Z"}})
    nkey = api.tenant_key(new)

    def charge(key: str, n: int) -> str:
        res = api(CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": f"e{n}"}}, key=key)["charge"]
        return str(res["__typename"])

    assert [charge(okey, n) for n in range(3)] == ["Charged", "Charged", "QuotaExceeded"]
    assert [charge(nkey, n) for n in range(3)] == ["Charged", "Charged", "Charged"]
    usage = api(USAGE, key=okey)["viewer"]["usage"]
    assert usage["planVersion"] == v and {"primitive": "email.send", "quota": 2, "used": 2} in usage["quotas"]
    assert api(USAGE, key=nkey)["viewer"]["usage"]["planVersion"] == v + 1
    # The explicit migration moves the old subscriber; the next call sees quota 5.
    moved = api(MIGRATE, {"k": "pro"})["migratePlanSubscribers"]
    assert moved == {"__typename": "PlanSubscribersMigrated", "moved": 1, "plan": {"version": v + 1}}
    assert api(USAGE, key=okey)["viewer"]["usage"]["planVersion"] == v + 1
    assert charge(okey, 3) == "Charged"
    # Renewal (a new period) moves a subscriber to the newest version too.
    api(UPSERT_PLAN, {"i": {"key": "pro", "setQuotas": [{"primitive": "email.send", "quota": 7}]}})
    api(SET_SUB, {"t": new, "i": {"planKey": "pro", "status": "active", "currentPeriodEnd": "2030-01-01T00:00:00Z"}})
    assert api(USAGE, key=nkey)["viewer"]["usage"]["planVersion"] == v + 1  # same period: not a renewal
    api(
        SET_SUB,
        {
            "t": new,
            "i": {
                "planKey": "pro",
                "status": "active",
                "currentPeriodStart": "2030-01-01T00:00:00Z",
                "currentPeriodEnd": "2030-02-01T00:00:00Z",
            },
        },
    )
    assert api(USAGE, key=nkey)["viewer"]["usage"]["planVersion"] == v + 2
