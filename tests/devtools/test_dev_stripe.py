"""`meterkit dev stripe` (app/devtools/stripe_dev.py): the demo catalog's prices exist, and events
reach the webhook by themselves, in order, retried until the endpoint answers 2xx (as Stripe does)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.bootstrap import DEMO_PACK_PRICES, DEMO_PLANS
from app.devtools.serving import BackgroundServer
from app.devtools.stripe_dev import DEV_API_KEY, DEV_WEBHOOK_SECRET, DevStripe, demo_prices
from app.pricing.seed import PACKS
from tests.live import free_port


def test_demo_prices_cover_the_demo_catalog() -> None:
    prices = {p.price_id: p for p in demo_prices()}
    for plan in DEMO_PLANS:
        if isinstance(plan.stripe_price_id, str):
            assert prices[plan.stripe_price_id].interval == plan.period
    cents = {key: c for key, _n, _cr, c in PACKS}
    for key, price_id in DEMO_PACK_PRICES.items():
        assert prices[price_id].unit_amount == cents[key] and prices[price_id].interval is None


def test_webhooks_are_delivered_in_order_and_retried() -> None:
    port = free_port()
    received: list[str] = []
    answers = iter([503])  # the first attempt fails; then 200s
    lock = threading.Lock()

    async def hook(request: Request) -> Response:
        event = await request.json()
        assert request.headers["stripe-signature"]
        with lock:
            status = next(answers, 200)
            if status == 200:
                received.append(event["type"])
        return JSONResponse({}, status_code=status)

    with DevStripe(port=free_port(), webhook_url=f"http://127.0.0.1:{port}/hook", poll_seconds=0.05) as dev:
        assert dev.fake.webhook_secret == DEV_WEBHOOK_SECRET
        client = dev.fake.client()
        customer = client.v1.customers.create({"name": "dev"})
        session = client.v1.checkout.sessions.create(
            {
                "mode": "payment",
                "customer": customer.id,
                "line_items": [{"price": "price_pack_small", "quantity": 1}],
                "success_url": "http://x/ok",
                "cancel_url": "http://x/no",
            }
        )
        dev.fake.complete_checkout(session.id)
        time.sleep(0.5)  # nothing listens yet: the events wait
        assert {e["type"] for e in dev.fake.pending_events()} == {"customer.created", "checkout.session.completed"}
        with BackgroundServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])]), port=port):
            deadline = time.monotonic() + 15
            while dev.fake.pending_events() and time.monotonic() < deadline:
                time.sleep(0.05)
        assert received == ["customer.created", "checkout.session.completed"]
        assert dev.fake.pending_events() == []
        assert abs(dev.fake.clock - time.time()) < 5  # the stand-in's clock follows the wall clock


def test_the_state_file_keeps_objects_keys_and_pending_events_across_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "stripe.json"
    with DevStripe(port=free_port(), state_file=state) as dev:
        assert not dev.restored
        client = dev.fake.client(api_key=DEV_API_KEY)
        customer = client.v1.customers.create({"name": "kept"}, {"idempotency_key": "cust-1"})
        session = client.v1.checkout.sessions.create(
            {
                "mode": "payment",
                "customer": customer.id,
                "line_items": [{"price": "price_pack_small", "quantity": 1}],
                "success_url": "http://x/ok",
                "cancel_url": "http://x/no",
            }
        )
        dev.fake.complete_checkout(session.id)  # a control, not an API call: saved on the next change
        client.v1.customers.update(customer.id, {"name": "kept too"})
        pending = [e["id"] for e in dev.fake.pending_events()]
    assert len(pending) == 3 and not list(tmp_path.glob("stripe.json.*"))

    with DevStripe(port=free_port(), state_file=state) as dev:
        assert dev.restored
        client = dev.fake.client(api_key=DEV_API_KEY)
        assert client.v1.customers.retrieve(customer.id).name == "kept too"
        assert client.v1.checkout.sessions.retrieve(session.id).payment_status == "paid"
        # The same idempotency key replays the stored answer: no second customer.
        again = client.v1.customers.create({"name": "kept"}, {"idempotency_key": "cust-1"})
        assert again.id == customer.id and len(dev.fake.objects("customer")) == 1
        assert [e["id"] for e in dev.fake.pending_events()] == pending  # still owed to the webhook
        assert {p.price_id for p in demo_prices()} <= {p["id"] for p in dev.fake.objects("price")}
        assert len(dev.fake.objects("price")) == len(demo_prices())  # the demo prices were not added twice


def test_a_damaged_state_file_is_refused_with_its_name(tmp_path: Path) -> None:
    for content in ("{not json", '{"version": 99}', '{"version": 1, "objects": []}'):
        state = tmp_path / "stripe.json"
        state.write_text(content)
        dev = DevStripe(port=free_port(), state_file=state)
        with pytest.raises(ValueError, match=f"cannot resume from {re.escape(str(state))}"):
            dev.start()
        assert state.read_text() == content  # left as it was, for a look
