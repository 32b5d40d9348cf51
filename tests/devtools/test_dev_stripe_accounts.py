"""`meterkit dev stripe --connect-account / --key-account`: the stand-in speaks for organizations'
own accounts too, and delivers each account's events by itself where Stripe would: a Connect
account's (naming it) to the platform's Connect endpoint, signed with its secret, and a
restricted-key account's to the organization's own endpoint, signed with that endpoint's secret."""

from __future__ import annotations

import threading
import time

import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.devtools.serving import BackgroundServer
from app.devtools.stripe_dev import DEV_CONNECT_WEBHOOK_SECRET, DevStripe
from tests.live import free_port

ORG = "org_" + "ab" * 16


def test_each_accounts_events_reach_its_own_endpoint_signed_with_its_secret() -> None:
    port = free_port()
    received: list[tuple[str, str | None, str]] = []
    lock = threading.Lock()
    secrets: dict[str, str] = {"connect": DEV_CONNECT_WEBHOOK_SECRET}

    async def hook(request: Request) -> Response:
        payload = (await request.body()).decode()
        where = request.path_params["where"]
        # Raises (500, and the stand-in retries) unless signed with that endpoint's own secret.
        stripe.WebhookSignature.verify_header(payload, request.headers["stripe-signature"], secrets[where])
        event = await request.json()
        with lock:
            received.append((where, event.get("account"), event["type"]))
        return JSONResponse({})

    app = Starlette(routes=[Route("/webhooks/stripe/{where}", hook, methods=["POST"])])
    gateway = f"http://127.0.0.1:{port}"
    with (
        BackgroundServer(app, port=port),
        DevStripe(port=free_port(), webhook_url=f"{gateway}/webhooks/stripe", poll_seconds=0.05) as dev,
    ):
        connected = dev.add_connect_account("org_" + "cd" * 16)
        assert connected.account_metadata == {"meterkit_organization_id": "org_" + "cd" * 16}
        own, key, secret = dev.add_key_account(ORG, gateway)
        secrets[ORG] = secret
        assert key.startswith("rk_test_") and secret.startswith("whsec_")
        # Each account is reached the way the gateway reaches it: Stripe-Account, or the restricted key.
        assert dev.fake.client().v1.accounts.retrieve_current().id == dev.fake.account_id
        platform = stripe.StripeClient(
            "sk_test_any", stripe_account=connected.account_id, base_addresses={"api": dev.url}
        )
        assert platform.v1.customers.create({"name": "c"}).id in {c["id"] for c in connected.objects("customer")}
        by_key = stripe.StripeClient(key, base_addresses={"api": dev.url})
        assert by_key.v1.accounts.retrieve_current().id == own.account_id
        by_key.v1.customers.create({"name": "k"})
        assert dev.fake.objects("customer") == []  # nothing on the platform's own account
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(received) < 2:
            time.sleep(0.05)
    assert sorted(received) == sorted(
        [("connect", connected.account_id, "customer.created"), (ORG, None, "customer.created")]
    )
