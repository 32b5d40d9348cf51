"""The `meterkit` client commands end to end: the CLI runs as a subprocess (the installed entry
point) against the app on a real uvicorn with the fake Stripe, on SQLite and PostgreSQL.
Human output by default, --json that parses, and the exit codes: 0 ok, 1 refused, 2 usage,
3 unreachable."""

from __future__ import annotations

from decimal import Decimal

from tests.cli.harness import Run, meterkit
from tests.live import free_port
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import PRO_PRICE, StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)


def test_tenant_and_operator_commands(stripe_env: StripeEnv) -> None:
    env = stripe_env

    def op(*args: str) -> Run:
        return meterkit(*args, url=env.url, key=env.api.operator_key)

    created = op("tenants", "create", "Acme Inc.", "--external-id", "acme-42", "--metadata", '{"crm": "x"}', "--json")
    assert created.code == 0, created.err
    tenant = created.json()
    assert tenant["name"] == "Acme Inc." and tenant["plan"] == {"key": "free"} and tenant["externalId"] == "acme-42"
    tid = tenant["id"]
    assert Decimal(tenant["credits"]["balance"]) == 20  # signup credits

    made = op("keys", "create", "--tenant", tid, "--name", "agent", "--json")
    assert made.code == 0, made.err
    secret, key_id = made.json()["secret"], made.json()["apiKey"]["id"]
    assert secret.startswith("mk_tn_") and made.json()["apiKey"]["tenantId"] == tid

    def me(*args: str) -> Run:
        return meterkit(*args, url=env.url, key=secret)

    # status: the tenant's own key; the operator gets the same with --tenant.
    st = me("status", "--json")
    assert st.code == 0, st.err
    assert st.json()["tenant"]["id"] == tid and st.json()["plan"]["key"] == "free"
    assert Decimal(st.json()["credits"]["available"]) == 20
    assert op("status", "--tenant", tid, "--json").json() == st.json()
    human = me("status")
    assert human.code == 0 and "Acme Inc." in human.out and "available" in human.out and "20" in human.out

    # credits grant: once per idempotency key.
    g = op("credits", "grant", tid, "5", "--idempotency-key", "cli-g1", "--reason", "welcome", "--json")
    assert g.code == 0, g.err
    assert g.json()["created"] is True and Decimal(g.json()["tenant"]["credits"]["balance"]) == 25
    again = op("credits", "grant", tid, "5", "--idempotency-key", "cli-g1")
    assert again.code == 0 and "already granted" in again.out
    expiring = op("credits", "grant", tid, "1", "--idempotency-key", "cli-g2", "--expires-at", "2099-01-01", "--json")
    assert expiring.code == 0 and Decimal(expiring.json()["tenant"]["credits"]["balance"]) == 26, expiring.out

    # usage: the credit history, newest first, paged by --limit.
    page = me("usage", "--days", "30", "--limit", "1", "--json")
    assert page.code == 0, page.err
    body = page.json()
    assert [e["action"] for e in body["nodes"]] == ["adjustment"] and Decimal(body["nodes"][0]["amount"]) == 1
    assert body["pageInfo"]["hasNextPage"] is True
    rest = me("usage", "--limit", "10", "--after", body["pageInfo"]["endCursor"], "--json").json()
    assert [e["action"] for e in rest["nodes"]] == ["adjustment", "signup"]
    table = me("usage", "--days", "30")
    assert table.code == 0 and "adjustment" in table.out and "signup" in table.out

    # billing packs, then topup: the Checkout URL from the fake Stripe; the webhook adds the credits.
    packs = me("billing", "packs", "--json")
    assert packs.code == 0, packs.err
    medium = next(p for p in packs.json() if p["key"] == "medium")
    assert Decimal(medium["credits"]) == 50 and medium["priceUsd"] == "23.00"
    assert "medium" in me("billing", "packs").out
    topup = me("billing", "topup", "--pack", "medium")
    assert topup.code == 0, topup.err
    url = topup.out.strip().splitlines()[-1]
    assert url.startswith(env.fake.url + "/checkout/"), topup.out
    session_id = url.rsplit("/", 1)[-1]
    assert env.fake.get(session_id)["mode"] == "payment"
    env.fake.complete_checkout(session_id)
    env.deliver_all()
    assert Decimal(me("status", "--json").json()["credits"]["balance"]) == 76

    # The webhook inbox, for operators.
    events = op("stripe", "events", "--outcome", "applied", "--json")
    assert events.code == 0, events.err
    assert ("checkout.session.completed", tid) in [(e["type"], e["tenantId"]) for e in events.json()["nodes"]]
    assert op("stripe", "events", "--outcome", "rejected", "--json").json()["nodes"] == []
    assert "checkout.session.completed" in op("stripe", "events").out

    # billing upgrade: no subscription yet, so a subscription Checkout.
    up = me("billing", "upgrade", "--plan", "pro", "--json")
    assert up.code == 0, up.err
    assert up.json()["__typename"] == "CheckoutSession" and up.json()["mode"] == "subscription"
    assert up.json()["url"].startswith(env.fake.url + "/checkout/")
    assert me("billing", "usage", "--json").json()["plan"] == "free"
    # Once subscribed on Stripe, upgrade moves the subscription; the webhook changes the plan.
    sub_id = env.subscribe(tid, PRO_PRICE)
    env.deliver_all()
    assert me("billing", "usage", "--json").json()["plan"] == "pro"
    moved = me("billing", "upgrade", "--plan", "team")
    assert moved.code == 0 and f"Subscription {sub_id} moved to plan team" in moved.out, moved.out + moved.err
    env.deliver_all()
    report = me("billing", "usage", "--json").json()
    assert (report["plan"], report["status"], report["quotas"]) == ("team", "active", {"email.send": 5000})
    assert "email.send" in me("billing", "usage").out

    # Pricing: two flux/schnell images (0.12 credits), and the catalog.
    img = me("pricing", "images", "--model", "fal-ai/flux/schnell", "--num-images", "2", "--json")
    assert img.code == 0, img.err
    assert img.json()["model"] == "fal-ai/flux/schnell" and Decimal(img.json()["estimatedCredits"]) == Decimal("0.12")
    vid = me("pricing", "video", "--model", "fal-ai/kling-video/v3/pro/text-to-video", "--duration", "5", "--json")
    assert vid.code == 0 and Decimal(vid.json()["estimatedCredits"]) > 0, vid.out + vid.err
    assert "estimated credits" in me("pricing", "images", "--model", "fal-ai/flux/schnell").out
    catalog = me("pricing", "--json")
    assert catalog.code == 0 and any(p["primitive"] == "email.send" for p in catalog.json()["prices"])
    assert "email.send" in me("pricing").out

    # The operator's reads.
    listed = op("tenants", "list", "--json")
    assert listed.code == 0 and tid in [t["id"] for t in listed.json()["nodes"]]
    assert tid in op("tenants", "list").out
    assert op("tenants", "show", tid, "--json").json()["stripeCustomerId"] is not None  # made by the topup
    assert {p["key"] for p in op("plans", "list", "--json").json()} >= {"free", "pro", "team"}
    assert "kit_pro" in op("plans", "show", "pro").out
    assert {k["key"] for k in op("kits", "list", "--json").json()} >= {"kit_basic", "kit_pro"}
    assert "email.send" in op("kits", "show", "kit_pro").out

    revoked = op("keys", "revoke", key_id, "--json")
    assert revoked.code == 0 and revoked.json()["revokedAt"] is not None


def test_exit_codes(stripe_env: StripeEnv) -> None:
    env = stripe_env
    tid = env.tenant()
    secret = env.api.tenant_key(tid)

    # 1: the gateway refused (a tenant key on an operator command; a pack that does not exist; a bad key).
    forbidden = meterkit("tenants", "list", url=env.url, key=secret)
    assert forbidden.code == 1 and "FORBIDDEN" in forbidden.err and forbidden.out == ""
    as_json = meterkit("tenants", "list", "--json", url=env.url, key=secret)
    assert as_json.code == 1 and as_json.json()["error"]["code"] == "FORBIDDEN"
    missing = meterkit("billing", "topup", "--pack", "huge", "--json", url=env.url, key=secret)
    assert missing.code == 1 and missing.json()["error"]["code"] == "NOT_FOUND"
    bad_key = meterkit("status", "--json", url=env.url, key="mk_tn_" + "x" * 43)
    assert bad_key.code == 1 and bad_key.json()["error"]["code"] == "UNAUTHENTICATED"
    bad_id = meterkit("tenants", "show", "nope", "--json", url=env.url, key=env.api.operator_key)
    assert bad_id.code == 1 and bad_id.json()["error"]["code"] == "VALIDATION_FAILED"

    # 2: a usage error, before anything is sent.
    assert meterkit("status", url=env.url, key=None).code == 2
    assert meterkit("status", "--bogus", url=env.url, key=secret).code == 2
    assert meterkit("billing", "topup", url=env.url, key=secret).code == 2  # --pack is required
    not_credits = meterkit("credits", "grant", tid, "lots", "--idempotency-key", "k", url=env.url, key="mk_op_x")
    assert not_credits.code == 2 and "amount" in not_credits.err
    assert meterkit("usage", "--days", "many", url=env.url, key=secret).code == 2

    # 3: nothing answers there.
    nowhere = meterkit("status", "--json", url=f"http://127.0.0.1:{free_port()}", key=secret)
    assert nowhere.code == 3 and nowhere.json()["error"]["code"] == "UNREACHABLE"
