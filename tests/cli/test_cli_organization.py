"""The `meterkit` CLI acting as an organization (issue 19): with only an mk_org_ key, against the app
on a real uvicorn and the fake Stripe (SQLite and PostgreSQL), `status`, `usage` and `billing
packs|topup|upgrade` act on the organization's own account: its balance, its history, the platform's
packs, and an upgrade to a platform tier that brings its monthly credits. With --tenant it acts for
one of its end users, who never sees the organization's balance."""

from __future__ import annotations

from decimal import Decimal

from tests.cli.test_cli_client import Run, meterkit
from tests.organizations.test_platform_tiers import CREATE_ORG, _tiers
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)


def test_an_organization_runs_its_billing_from_the_cli(stripe_env: StripeEnv) -> None:
    env = stripe_env
    _tiers(env.api, env)  # the platform's tiers: pro (200 credits a month), scale
    made = env.api(CREATE_ORG, {"i": {"name": "Acme Co"}})["createOrganization"]
    org_id, key = made["organization"]["id"], made["secret"]
    assert key.startswith("mk_org_")

    def org(*args: str) -> Run:
        return meterkit(*args, url=env.url, key=key)

    st = org("status", "--json")
    assert st.code == 0, st.err
    assert st.json()["tenant"]["id"] == org_id and st.json()["tier"] is None and st.json()["plan"] is None
    assert Decimal(st.json()["credits"]["balance"]) == 20  # the organization's signup credits
    human = org("status")
    assert human.code == 0 and "organization" in human.out and "Acme Co" in human.out and "tier" in human.out

    # Its own history: the signup grant.
    history = org("usage", "--days", "30", "--json")
    assert history.code == 0, history.err
    assert [(e["action"], Decimal(e["amount"])) for e in history.json()["nodes"]] == [("signup", 20)]

    # The platform's packs, and a top-up through the platform's Checkout onto the organization's account.
    packs = org("billing", "packs", "--json")
    assert packs.code == 0 and "medium" in {p["key"] for p in packs.json()}, packs.err
    topup = org("billing", "topup", "--pack", "medium")
    assert topup.code == 0, topup.err
    session_id = topup.out.strip().splitlines()[-1].rsplit("/", 1)[-1]
    env.fake.complete_checkout(session_id)
    env.deliver_all()
    assert Decimal(org("status", "--json").json()["credits"]["balance"]) == 70

    # upgrade --plan pro: a platform tier, 200 credits a month, bought through Checkout.
    up = org("billing", "upgrade", "--plan", "pro", "--json")
    assert up.code == 0, up.err
    assert up.json()["__typename"] == "CheckoutSession" and up.json()["mode"] == "subscription"
    env.fake.complete_checkout(up.json()["sessionId"])
    env.deliver_all()
    st = org("status", "--json").json()
    assert st["tier"] == "pro" and st["subscriptionStatus"] is None  # no end-user plan on its own account
    assert Decimal(st["credits"]["balance"]) == 270
    moved = org("billing", "upgrade", "--plan", "scale")
    assert moved.code == 0 and "moved to plan scale" in moved.out, moved.out + moved.err
    env.deliver_all()
    assert org("status", "--json").json()["tier"] == "scale"
    assert Decimal(org("status", "--json").json()["credits"]["balance"]) == 570  # topped up to 500, not stacked
    # A tier that does not exist: refused (exit 1), nothing bought.
    assert org("billing", "upgrade", "--plan", "gold").code == 1

    # --tenant: one of its end users (no wallet: no balance of its own; never the organization's).
    user = env.api('mutation { createTenant(input: {name: "u"}) { ... on Tenant { id } } }', key=key)
    tid = user["createTenant"]["id"]
    mine = org("status", "--tenant", tid, "--json")
    assert mine.code == 0 and mine.json()["tenant"]["id"] == tid, mine.err
    assert Decimal(mine.json()["credits"]["balance"]) == 0 and mine.json()["tier"] is None
