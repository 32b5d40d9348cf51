"""The typed Python client (meterkit_client, clients/python): plans.upsert and for_user(id).billing
through the generated code, against the app on a real uvicorn (with the fake Stripe), on SQLite and
PostgreSQL; and the package on its own."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import meterkit_client
import pytest
from meterkit_client import Meterkit, Refused, Unreachable

from tests.live import free_port
from tests.paths import ROOT
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)


def test_the_sdk_calls(stripe_env: StripeEnv) -> None:
    env = stripe_env
    with Meterkit(env.url, env.api.operator_key) as naive:
        # plans.upsert: idempotent by key.
        args = dict(
            key="pro_sdk",
            name="Pro",
            stripe_price_id="price_1Pxyz",
            account_kit_id="kit_pro",
            quotas={"email.send": 1000, "search.web": 5000},
            period="month",
        )
        plan = naive.plans.upsert(**args)  # type: ignore[arg-type]
        assert plan.key == "pro_sdk" and plan.account_kit_id == "kit_pro" and plan.period.value == "month"
        assert {(q.primitive, q.quota) for q in plan.quotas} == {("email.send", 1000), ("search.web", 5000)}
        assert naive.plans.upsert(**args) == plan  # type: ignore[arg-type]
        assert naive.plans.get("pro_sdk").stripe_price_id == "price_1Pxyz"

        user_id = naive.tenants.create("Acme", external_id="acme-1").id
        end = env.clock.now() + timedelta(days=30)
        changed = naive.for_user(user_id).billing.set_subscription(
            plan_key="pro_sdk",
            status="active",
            stripe_customer_id="cus_sdk",
            stripe_subscription_id="sub_sdk",
            current_period_end=end,
        )
        assert changed.plan.key == "pro_sdk" and changed.tenant.account_kit is not None
        assert changed.tenant.account_kit.key == "kit_pro"  # assignKit defaults to true
        assert changed.subscription.current_period_end == end

        charged = naive.for_user(user_id).charge("email.send", idempotency_key="sdk-1", reference="msg_1")
        assert charged.credits_used == Decimal("1") and not charged.replayed
        again = naive.for_user(user_id).charge("email.send", idempotency_key="sdk-1", reference="msg_1")
        assert again.replayed and again.event_id == charged.event_id

        # const { plan, status, period, quotas, usage } = await naive.forUser(userId).billing.usage();
        usage = naive.for_user(user_id).billing.usage()
        assert (usage.plan, usage.status) == ("pro_sdk", "active")
        assert usage.quotas == {"email.send": 1000, "search.web": 5000}
        assert usage.usage == {"email.send": 1}
        assert usage.quotas["email.send"] - usage.usage.get("email.send", 0) == 999 == usage.remaining("email.send")
        assert usage.period.start <= env.clock.now() < usage.period.end

        # An async job: reserve the estimate, settle on success.
        hold = naive.for_user(user_id).reserve("research.thorough", idempotency_key="sdk-job-1")
        assert hold.status == "open" and hold.amount == Decimal("5")
        settled = naive.for_user(user_id).settle(hold.id)
        assert settled.credits_used == Decimal("5")
        released = naive.for_user(user_id).release(
            naive.for_user(user_id).reserve("research.thorough", idempotency_key="sdk-job-2").id
        )
        assert released.status == "released"

        # The tenant's own key: the same calls without for_user.
        secret = naive.keys.create(user_id, name="agent").secret
    with Meterkit(env.url, secret) as tenant:
        status = tenant.status()
        assert status.tenant.id == user_id and status.plan is not None and status.plan.key == "pro_sdk"
        assert status.credits.available == status.credits.balance
        assert tenant.billing.usage().usage == {"email.send": 1, "research.thorough": 1}
        history = tenant.billing.history(days=30, limit=10)
        assert [e.action for e in history.nodes][:2] == ["research.thorough", "email.send"]
        assert tenant.charge("search.web", idempotency_key="sdk-2").credits_used == Decimal("1")


def test_refusals_are_typed(stripe_env: StripeEnv) -> None:
    env = stripe_env
    with Meterkit(env.url, env.api.operator_key) as op:
        poor = op.tenants.create("Poor").id  # the free plan: 20 signup credits
        with pytest.raises(Refused) as refused:
            op.for_user(poor).charge("search.web", idempotency_key="big", quantity=50)
        assert refused.value.code == "INSUFFICIENT_CREDITS"
        assert refused.value.result.shortfall > 0 and {p.key for p in refused.value.result.packs} >= {"medium"}
        # Every money field is a Decimal: credits and US dollars alike.
        packs = refused.value.result.packs
        assert all(isinstance(p.price_usd, Decimal) and isinstance(p.credits, Decimal) for p in packs)
        with pytest.raises(Refused) as refused:
            op.plans.upsert(key="bad", name="Bad", account_kit_id="kit_missing")
        assert refused.value.code == "NOT_FOUND"
        with pytest.raises(Refused) as refused:
            op.tenants.get("ten_" + "0" * 32)
        assert refused.value.code == "NOT_FOUND"
        with pytest.raises(TypeError):
            op.credits.grant(poor, 1.5, idempotency_key="float")  # type: ignore[arg-type]
        grant = op.credits.grant(poor, "2.5", idempotency_key="g1", reason="goodwill")
        assert grant.created and grant.tenant.credits.balance == Decimal("22.5")
        secret = op.keys.create(poor).secret
    with Meterkit(env.url, secret) as tenant:
        with pytest.raises(Refused) as refused:
            tenant.plans.upsert(key="free", name="Mine", account_kit_id="kit_pro")
        assert refused.value.code == "FORBIDDEN"
        with pytest.raises(Refused) as refused:
            tenant.stripe.events()
        assert refused.value.code == "FORBIDDEN"
    with Meterkit(env.url, "mk_tn_" + "x" * 43) as stranger, pytest.raises(Refused) as refused:
        stranger.status()
    assert (refused.value.code, refused.value.status) == ("UNAUTHENTICATED", 401)
    with Meterkit(f"http://127.0.0.1:{free_port()}", "mk_op_x", timeout=2) as nowhere, pytest.raises(Unreachable):
        nowhere.plans.list()


def test_topup_and_the_webhook_inbox(stripe_env: StripeEnv) -> None:
    env = stripe_env
    with Meterkit(env.url, env.api.operator_key) as op:
        tenant = op.tenants.create("Buyer").id
        session = op.for_user(tenant).billing.topup("medium")
        assert session.mode == "payment" and session.url.startswith("http")
        env.fake.complete_checkout(session.session_id)
        env.deliver_all()
        assert op.tenants.get(tenant).credits.balance == Decimal("70")  # 20 signup + 50 medium

        events = op.stripe.events()
        seen = [(e.type_, e.outcome, e.tenant_id) for e in events.nodes]
        assert ("checkout.session.completed", "applied", tenant) in seen
        assert len(events.nodes) == len(env.inbox()) >= 2
        stamps = [(e.processed_at, e.id) for e in events.nodes]
        assert stamps == sorted(stamps, reverse=True)  # newest first
        assert op.stripe.events(outcome="rejected").nodes == []
        first = op.stripe.events(first=1)
        assert first.page_info.has_next_page and len(first.nodes) == 1
        rest = op.stripe.events(after=first.page_info.end_cursor)
        assert [e.id for e in first.nodes + rest.nodes] == [e.id for e in events.nodes]
        ignored = op.stripe.events(outcome="ignored").nodes
        assert ignored and all(e.outcome == "ignored" for e in ignored)
        for bad, field in (
            (dict(outcome="no such outcome!"), "outcome"),
            (dict(first=0), "first"),
            (dict(first=201), "first"),
            (dict(after="garbage"), "after"),
        ):
            with pytest.raises(Refused) as refused:
                op.stripe.events(**bad)  # type: ignore[arg-type]
            assert (refused.value.code, refused.value.field) == ("VALIDATION_FAILED", field)


def test_the_client_is_a_package_of_its_own(tmp_path: Path) -> None:
    """`pip install ./clients/python` in an empty venv: `import meterkit_client` works, with only
    httpx and pydantic beside it and nothing of the gateway."""
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT / "clients" / "python", source, ignore=shutil.ignore_patterns("__pycache__", "build"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(source)], check=True, timeout=240)
    probe = (
        "import importlib.util, meterkit_client;"
        "from meterkit_client import Meterkit, Refused;"
        "print(meterkit_client.__version__, meterkit_client.SCHEMA_SHA256,"
        " importlib.util.find_spec('app') is None, importlib.util.find_spec('strawberry') is None,"
        " importlib.util.find_spec('sqlalchemy') is None)"
    )
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the venv installed
    out = subprocess.run(
        [str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path, env=clean
    )
    version, digest, *absent = out.stdout.split()
    assert (version, digest) == (meterkit_client.__version__, meterkit_client.SCHEMA_SHA256)
    assert absent == ["True", "True", "True"]  # no gateway code, no server dependencies


def test_the_client_matches_the_schema_and_the_gateway_version() -> None:
    client = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())["project"]
    gateway = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert client["version"] == gateway["version"] == meterkit_client.__version__
    assert set(client["dependencies"]) == {"httpx>=0.27", "pydantic>=2.6"}
    assert f"meterkit-client=={client['version']}" in gateway["dependencies"]
    # Generated from the schema.graphql in the repository (make client writes the digest; make lint's
    # client-check fails when the generated code is stale).
    assert hashlib.sha256((ROOT / "schema.graphql").read_bytes()).hexdigest() == meterkit_client.SCHEMA_SHA256
