"""Smoke test against localstripe (a third-party Stripe emulator from PyPI), an independent
peer to our own fake: one subscription lifecycle, created then canceled, through its signed
webhooks and our re-fetch, on SQLite and PostgreSQL.

localstripe 1.15 speaks an older API dialect (plans, not prices; items carry `plan`), sends
only some event types (customer.subscription.created/deleted, not updated or invoice.paid)
and signs with the event's `created` as the timestamp, so it covers reflection, not money."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from app.core.auth import TenantScope
from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.devtools.serving import BackgroundServer
from app.integrations.stripe.client import StripeGateway
from app.integrations.stripe.service import ensure_customer
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.conftest import Api, Database
from tests.fixtures_catalog import seed_catalog
from tests.live import free_port
from tests.stripe_harness import _HttpApiClient

SECRET = "whsec_localstripe"


@pytest.fixture(scope="module")
def localstripe() -> Iterator[str]:
    exe = Path(sys.executable).with_name("localstripe")
    assert exe.exists(), "localstripe is a dev dependency: pip install -e '.[dev]'"
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "--port", str(port), "--from-scratch"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "localstripe exited"
            try:
                httpx.get(url + "/v1/customers", auth=("sk_test_x", ""), timeout=1, trust_env=False)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "localstripe did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting for the webhook"
        time.sleep(0.1)


def test_localstripe_subscription_lifecycle(db: Database, localstripe: str) -> None:
    clock = FrozenClock(datetime.now(UTC))
    settings = Settings(
        env="test",
        database_url="sqlite://unused",
        stripe_api_key="sk_test_localstripe",
        stripe_webhook_secret=SECRET,
        stripe_api_base=localstripe,
    )
    with BackgroundServer(create_app(settings, engine=db.engine, clock=clock)) as server:
        api = Api(_HttpApiClient(server.url), db)  # type: ignore[arg-type]
        with unit_of_work(db.engine) as s:
            _, api.operator_key = create_api_key(s, clock, role="operator", scope=None, name="tests")
        seed_catalog(api)  # plan "pro" has Stripe price id "price_pro"
        # One name: registering it again replaces the previous run's (now stopped) receiver.
        r = httpx.post(
            f"{localstripe}/_config/webhooks/meterkit",
            data={"url": server.url + "/webhooks/stripe", "secret": SECRET},
            trust_env=False,
        )
        assert r.status_code == 200, r.text
        client = stripe.StripeClient("sk_test_localstripe", base_addresses={"api": localstripe})
        with contextlib.suppress(stripe.StripeError):  # 409 when the other database's run made it already
            client.v1.plans.create(
                {"id": "price_pro", "product": {"name": "Pro"}, "amount": 2000, "currency": "usd", "interval": "month"}
            )

        tenant = api.create_tenant("Acme")
        customer = ensure_customer(db.engine, StripeGateway.from_settings(settings), TenantScope(tenant))
        pm = client.v1.payment_methods.create(
            {"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
        )
        client.v1.payment_methods.attach(pm.id, {"customer": customer})
        client.v1.customers.update(customer, {"invoice_settings": {"default_payment_method": pm.id}})
        sub = client.v1.subscriptions.create({"customer": customer, "items": [{"plan": "price_pro"}]})

        def tenant_state() -> tuple[str | None, str | None, str | None, datetime | None]:
            q = """query($t: ID!) { tenant(id: $t) { plan { key } subscription { status stripeSubscriptionId
              currentPeriodEnd } } }"""
            t = api(q, {"t": tenant})["tenant"]
            s = t["subscription"] or {}
            end = s.get("currentPeriodEnd")
            return (
                t["plan"]["key"] if t["plan"] else None,
                s.get("status"),
                s.get("stripeSubscriptionId"),
                datetime.fromisoformat(end) if end else None,
            )

        state = wait_for(lambda: (st := tenant_state())[0] == "pro" and st)
        assert state[1:3] == ("active", sub.id)
        assert state[3] == datetime.fromtimestamp(sub["current_period_end"], UTC)

        client.v1.subscriptions.cancel(sub.id)
        wait_for(lambda: tenant_state()[1] == "canceled")
        # Read again: the query reads the tenant's plan and its subscription in two statements, so
        # the read that first saw "canceled" may have read the plan before the webhook's commit.
        # The plan and the subscription change in one transaction, so a read begun after it sees both.
        assert tenant_state()[:3] == ("free", "canceled", sub.id)
