"""/metrics on a real uvicorn (issue 23, point 1): a scrape after a charge, a refusal, a Stripe
webhook (from the local Stripe fake) and an alert delivery shows each counted; the scrape-time
gauges read the database; tenants cannot read it; several workers (`meterkit serve --workers 2`,
multiprocess mode) are summed whichever worker answers the scrape."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from app.alerts import worker
from app.alerts.worker import DeliveryConfig
from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.devtools.serving import BackgroundServer
from app.devtools.stripe_fake.fake import FakeStripe
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.alerts.test_alerts import CREATE as CREATE_ENDPOINT
from tests.alerts.test_alerts import receiver
from tests.conftest import Api, Database
from tests.live import free_port, wait_healthy
from tests.metering.test_metering_concurrency import make_tenant
from tests.observability.scrape import names, scrape, value
from tests.paths import ROOT
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import _HttpApiClient


@pytest.fixture
def stripe(fake_stripe: FakeStripe) -> FakeStripe:  # noqa: F811  (the fixture, imported above)
    return fake_stripe


CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename } }"""


def _settings(fake: FakeStripe, **extra: Any) -> Settings:
    return Settings(
        env="test",
        database_url="sqlite://unused",
        auth_cache_seconds=0,
        webhook_allow_private=True,
        metrics_enabled=True,
        metrics_db_cache_seconds=0,  # every scrape reads the database afresh: the test sees each change
        stripe_api_key="sk_test_meterkit",
        stripe_webhook_secret=fake.webhook_secret,
        stripe_api_base=fake.url,
        **extra,
    )


def test_a_scrape_counts_charges_refusals_webhooks_and_deliveries(db: Database, stripe: FakeStripe) -> None:
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    app = create_app(_settings(stripe), engine=db.engine, clock=clock)
    with BackgroundServer(app) as server, receiver() as hook:
        stripe.webhook_url = server.url + "/webhooks/stripe"
        api = Api(cast(Any, _HttpApiClient(server.url)), db)
        with unit_of_work(db.engine) as s:
            _, api.operator_key = create_api_key(s, clock, role="operator", scope=None, name="tests")
        op = api.operator_key
        tid, key = make_tenant(api, quota=4, credits=500)
        made = api(CREATE_ENDPOINT, {"i": {"url": hook.url, "eventTypes": ["quota.threshold"]}})
        assert made["createWebhookEndpoint"]["__typename"] == "CreatedWebhookEndpoint", made
        before = scrape(server.url, op)

        charged = api(CHARGE, {"i": {"primitive": "email.send", "quantity": 2, "idempotencyKey": "a"}}, key=key)
        assert charged["charge"]["__typename"] == "Charged"  # 2 of 4: the 50% alert is in the outbox
        refused = api(CHARGE, {"i": {"primitive": "email.send", "quantity": 3, "idempotencyKey": "b"}}, key=key)
        assert refused["charge"]["__typename"] == "QuotaExceeded"
        outside = api(CHARGE, {"i": {"primitive": "search.web", "idempotencyKey": "c"}}, key=key)
        assert outside["charge"]["__typename"] == "NotEntitled"
        unknown = api(CHARGE, {"i": {"primitive": "nope.made_up", "idempotencyKey": "d"}}, key=key)
        assert unknown["charge"]["__typename"] == "ValidationError"
        # The gauges read the outbox at scrape time: one event not yet fanned out.
        mid = scrape(server.url, op)
        assert value(mid, "meterkit_alert_outbox_depth", stage="event") >= 1
        assert value(mid, "meterkit_alert_outbox_oldest_pending_seconds") >= 0

        worker.fan_out(db.engine, clock)
        assert worker.deliver_due(db.engine, clock, DeliveryConfig(allow_private=True, deadline=5)) == 1
        assert len(hook.seen) == 1

        # A Stripe webhook, sent by the fake Stripe to the server (signed): the customer subscribes.
        stripe.add_price("price_obs", 1000, "month")
        customer = stripe.client().v1.customers.create({"metadata": {"tenant_id": tid}})
        stripe.client().v1.subscriptions.create({"customer": customer.id, "items": [{"price": "price_obs"}]})
        sent = stripe.deliver_pending()
        assert sent and all(r.status_code == 200 for r in sent), [(r.status_code, r.text) for r in sent]
        bad = httpx.post(server.url + "/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=x"})
        assert bad.status_code == 400

        after = scrape(server.url, op)

    def delta(name: str, **labels: Any) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("meterkit_charges_total", operation="charge", outcome="charged", primitive="email.send") == 1
    assert delta("meterkit_charges_total", operation="charge", outcome="quota_exceeded", primitive="email.send") == 1
    # A primitive that the kit did not admit is never a label value (a client could mint them).
    assert delta("meterkit_charges_total", operation="charge", outcome="not_entitled", primitive="-") == 1
    # (The counters are the process's: other tests' charges may have named search.web before; none
    # of this test's refusals adds a label set naming either.)
    added = set(after) - set(before)
    assert not any("nope.made_up" in str(labels) or "search.web" in str(labels) for _, labels in added), added
    assert not any("nope.made_up" in str(labels) for _, labels in after)
    assert delta("meterkit_credits_debited_total", primitive="email.send") == 2  # 1 credit each
    assert delta("meterkit_webhook_deliveries_total", result="delivered") == 1
    assert delta("meterkit_stripe_webhooks_total") == len(sent) + 1
    assert delta("meterkit_stripe_webhooks_total", type="customer.subscription.created") >= 1
    assert delta("meterkit_stripe_webhooks_total", type="unknown", outcome="bad_signature") == 1
    # Requests by route / GraphQL operation and status, as a histogram.
    assert delta("meterkit_http_request_duration_seconds_count", route="/graphql", operation="mutation charge") == 4
    assert delta("meterkit_http_request_duration_seconds_count", route="/webhooks/stripe", status="400") == 1
    assert delta("meterkit_http_request_duration_seconds_bucket", operation="mutation charge", le="+Inf") == 4
    # The outbox drained; the gauges that need no traffic are there.
    assert value(after, "meterkit_alert_outbox_depth") == 0
    assert value(after, "meterkit_alert_outbox_oldest_pending_seconds") == 0
    for gauge in (
        "meterkit_holds_open",
        "meterkit_overage_reports",
        "meterkit_live_sockets",
        "meterkit_live_subscriptions",
        "meterkit_db_pool_in_use",
        "meterkit_db_pool_waiting",
        "meterkit_db_pool_capacity",
    ):
        assert gauge in names(after), gauge
    assert value(after, "meterkit_db_pool_capacity") > 0
    # No tenant or key id in any label.
    assert tid not in str(after.keys())


def test_tenants_cannot_read_metrics_and_it_is_off_by_default(db: Database, stripe: FakeStripe) -> None:
    clock = FrozenClock(datetime.now(UTC))
    with BackgroundServer(create_app(_settings(stripe), engine=db.engine, clock=clock)) as server:
        api = Api(cast(Any, _HttpApiClient(server.url)), db)
        with unit_of_work(db.engine) as s:
            _, api.operator_key = create_api_key(s, clock, role="operator", scope=None, name="tests")
        tid = api.create_tenant("Peeker")
        tenant_key = api.tenant_key(tid)
        r = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {tenant_key}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = httpx.get(server.url + "/metrics")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    off = Settings(env="test", database_url="sqlite://unused")
    assert off.metrics_enabled is False
    with BackgroundServer(create_app(off, engine=db.engine, clock=clock)) as server:
        r = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {api.operator_key}"})
        assert r.status_code == 404


def test_the_reconcile_query_sets_the_drift_gauge(db: Database, stripe: FakeStripe) -> None:
    clock = FrozenClock(datetime.now(UTC))
    with BackgroundServer(create_app(_settings(stripe), engine=db.engine, clock=clock)) as server:
        api = Api(cast(Any, _HttpApiClient(server.url)), db)
        with unit_of_work(db.engine) as s:
            _, api.operator_key = create_api_key(s, clock, role="operator", scope=None, name="tests")
        api.create_tenant("Books")
        report = api("{ reconcile { checkedTenants driftedTenants } }")["reconcile"]
        assert report["driftedTenants"] == 0 and report["checkedTenants"] >= 1
        after = scrape(server.url, api.operator_key)
    assert value(after, "meterkit_ledger_drift_tenants") == 0
    assert value(after, "meterkit_ledger_reconcile_timestamp_seconds") > datetime.now(UTC).timestamp() - 60


def test_several_workers_are_summed_in_multiprocess_mode(db: Database, tmp_path: Path) -> None:
    """`meterkit serve --workers 2`: each scrape lands on either worker and shows every charge, and
    each charge has its access line in the server's output."""
    url = db.url
    op_key = "mk_op_" + secrets.token_urlsafe(32)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METERKIT_", "PROMETHEUS_"))}
    env.update(
        METERKIT_DATABASE_URL=url,
        METERKIT_ENV="development",
        METERKIT_OPERATOR_KEY=op_key,
        METERKIT_METRICS_ENABLED="true",
        METERKIT_METRICS_DB_CACHE_SECONDS="0",
        METERKIT_AUTH_CACHE_SECONDS="0",
    )
    log = tmp_path / "serve.log"
    # `python -m app.cli` (the `meterkit` script's module), from this checkout.
    cmd = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*cmd, "--workers", "2"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base, 60, log.read_text)
        with httpx.Client(base_url=base, timeout=30, trust_env=False) as http:
            api = Api(cast(Any, http), db)
            api.operator_key = op_key
            _, key = make_tenant(api, credits=500)
            before = [scrape(base, op_key) for _ in range(4)]
            n = 12
            for i in range(n):  # new connections: uvicorn's workers share the socket, so both serve some
                with httpx.Client(base_url=base, timeout=30, trust_env=False) as one:
                    r = one.post(
                        "/graphql",
                        json={
                            "query": CHARGE,
                            "variables": {"i": {"primitive": "email.send", "idempotencyKey": f"w{i}"}},
                        },
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    assert r.json()["data"]["charge"]["__typename"] == "Charged"
            after = [scrape(base, op_key) for _ in range(4)]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    labels = {"operation": "charge", "outcome": "charged", "primitive": "email.send"}
    # Every scrape, whichever worker answered it, counts all charges of both workers.
    assert {value(s, "meterkit_charges_total", **labels) for s in before} == {0}
    assert {value(s, "meterkit_charges_total", **labels) for s in after} == {n}
    assert {value(s, "meterkit_http_request_duration_seconds_count", operation="mutation charge") for s in after} == {n}
    # Each worker's log writer (a thread of its own) wrote every charge's access line before it exited.
    lines = log.read_text().splitlines()
    assert sum("meterkit.access  POST /graphql mutation charge 200" in x for x in lines) == n, lines[-20:]


pytestmark = pytest.mark.timeout(180)
