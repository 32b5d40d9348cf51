"""Tests of the fake Stripe server, driven through the real ``stripe`` library."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from stripe.params.checkout import SessionCreateParams

from app.devtools.serving import BackgroundServer
from app.devtools.stripe_fake.fake import FakeStripe
from app.devtools.stripe_fake.params import decode_form

WEBHOOK_SECRET = "whsec_test_receiver"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeStripe) -> FakeStripe:
    server.reset()
    return server


@pytest.fixture
def client(fake: FakeStripe) -> stripe.StripeClient:
    return fake.client()


def ts(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=UTC).timestamp())


# --------------------------------------------------------------------------- encoding and errors


def test_decode_form_builds_nested_dicts_and_lists() -> None:
    body = (
        "items[0][price]=price_a&items[1][price]=price_b&items[1][quantity]=2"
        "&metadata[k]=v&metadata[0]=digit-key&expand[]=latest_invoice&expand[]=customer&empty="
    )
    assert decode_form(body) == {
        "items": [{"price": "price_a"}, {"price": "price_b", "quantity": "2"}],
        "metadata": {"k": "v", "0": "digit-key"},  # metadata keys stay keys, even digits
        "expand": ["latest_invoice", "customer"],
        "empty": "",
    }


def test_errors_come_back_as_the_librarys_exceptions(fake: FakeStripe, client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.customers.retrieve("cus_nope")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")

    with pytest.raises(stripe.InvalidRequestError) as route:
        client.raw_request("get", "/v1/not_a_thing")
    assert route.value.http_status == 404
    assert "Unrecognized request URL" in str(route.value.user_message)

    with pytest.raises(stripe.InvalidRequestError) as unknown:
        typo: Any = {"emial": "typo@example.com"}
        client.v1.customers.create(params=typo)
    assert unknown.value.param == "emial"

    with pytest.raises(stripe.AuthenticationError):
        fake.client(api_key="sk_live_real").v1.customers.list()
    assert fake.created["customer"] == 0


# --------------------------------------------------------------------------- customers and prices


def test_customers_create_retrieve_and_paginate_newest_first(fake: FakeStripe, client: stripe.StripeClient) -> None:
    ids = [client.v1.customers.create(params={"email": f"c{i}@example.com"}).id for i in range(5)]

    again = client.v1.customers.retrieve(ids[2])
    assert (again.object, again.email, again.livemode) == ("customer", "c2@example.com", False)

    first = client.v1.customers.list(params={"limit": 2})
    assert [c.id for c in first.data] == [ids[4], ids[3]]
    assert first.has_more is True
    second = client.v1.customers.list(params={"limit": 2, "starting_after": first.data[-1].id})
    assert [c.id for c in second.data] == [ids[2], ids[1]]
    assert [c.id for c in first.auto_paging_iter()] == list(reversed(ids))
    assert [c.id for c in client.v1.customers.list(params={"email": "c1@example.com"}).data] == [ids[1]]
    assert [e["type"] for e in fake.events()] == ["customer.created"] * 5


def test_prices_created_through_api_and_seeded_with_chosen_ids(fake: FakeStripe, client: stripe.StripeClient) -> None:
    product = client.v1.products.create(params={"name": "Credits"})
    price = client.v1.prices.create(
        params={"product": product.id, "unit_amount": 500, "currency": "usd", "recurring": {"interval": "month"}}
    )
    assert price.recurring is not None
    assert (price.unit_amount, price.type, price.recurring.interval) == (500, "recurring", "month")

    fake.add_price("price_pro", 2000, "month")
    fake.add_price("price_pack", 1000)
    pro = client.v1.prices.retrieve("price_pro")
    assert pro.recurring is not None
    assert (pro.id, pro.unit_amount, pro.recurring.interval) == ("price_pro", 2000, "month")
    assert client.v1.prices.retrieve("price_pack").recurring is None
    assert {p.id for p in client.v1.prices.list(params={"type": "one_time"}).data} == {"price_pack"}

    with pytest.raises(stripe.InvalidRequestError):
        client.v1.prices.create(params={"product": "prod_missing", "unit_amount": 1, "currency": "usd"})


# --------------------------------------------------------------------------- subscriptions


@pytest.mark.parametrize("period_on_items_only", [False, True])
def test_subscription_create_update_cancel(
    fake: FakeStripe, client: stripe.StripeClient, period_on_items_only: bool
) -> None:
    fake.period_on_items_only = period_on_items_only
    fake.clock = ts(2025, 1, 15)
    fake.add_price("price_pro", 2000, "month")
    fake.add_price("price_team", 5000, "month")
    customer = client.v1.customers.create(params={"email": "t@example.com"})

    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": "price_pro"}], "metadata": {"tenant": "t1"}}
    )
    item = sub["items"].data[0]
    assert (sub.status, sub.customer, sub.metadata["tenant"]) == ("active", customer.id, "t1")
    assert (item.price.id, item.price.unit_amount) == ("price_pro", 2000)
    assert (item.current_period_start, item.current_period_end) == (ts(2025, 1, 15), ts(2025, 2, 15))
    raw = sub.to_dict()
    if period_on_items_only:
        assert "current_period_end" not in raw
    else:
        assert raw["current_period_end"] == ts(2025, 2, 15)

    invoice = client.v1.invoices.retrieve(sub.latest_invoice)  # type: ignore[arg-type]
    assert (invoice.status, invoice.billing_reason, invoice.amount_paid) == ("paid", "subscription_create", 2000)
    assert invoice.parent.subscription_details.subscription == sub.id  # type: ignore[union-attr]
    assert invoice.lines.data[0].period.end == ts(2025, 2, 15)

    # Changing the plan names the existing item, as on real Stripe.
    updated = client.v1.subscriptions.update(
        sub.id,
        params={
            "items": [{"id": item.id, "price": "price_team"}],
            "proration_behavior": "none",
            "cancel_at_period_end": True,
            "metadata": {"tenant": "", "plan": "team"},
        },
    )
    assert [i.price.id for i in updated["items"].data] == ["price_team"]
    assert updated.cancel_at_period_end is True
    assert updated.metadata.to_dict() == {"plan": "team"}
    assert len(client.v1.invoices.list(params={"subscription": sub.id}).data) == 1  # "none" bills nothing

    canceled = client.v1.subscriptions.cancel(sub.id)
    assert (canceled.status, canceled.canceled_at, canceled.ended_at) == ("canceled", fake.clock, fake.clock)
    assert client.v1.subscriptions.list(params={"customer": customer.id}).data == []
    assert [s.id for s in client.v1.subscriptions.list(params={"status": "all"}).data] == [sub.id]
    assert [e["type"] for e in fake.events("customer.subscription.*")] == [
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    ]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.update(sub.id, params={"items": [{"id": item.id, "price": "price_pro"}]})


def test_update_without_item_id_adds_an_item_like_stripe(fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.add_price("price_pro", 2000, "month")
    fake.add_price("price_seats", 300, "month")
    customer = fake.add_customer("cus_t1")
    sub = client.v1.subscriptions.create(params={"customer": customer["id"], "items": [{"price": "price_pro"}]})

    updated = client.v1.subscriptions.update(sub.id, params={"items": [{"price": "price_seats", "quantity": 3}]})

    assert [(i.price.id, i.quantity) for i in updated["items"].data] == [("price_pro", 1), ("price_seats", 3)]


def test_always_invoice_bills_the_prorated_difference(fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.clock = ts(2025, 4, 1)
    fake.add_price("price_pro", 3000, "month")
    fake.add_price("price_team", 6000, "month")
    sub = client.v1.subscriptions.create(
        params={"customer": fake.add_customer()["id"], "items": [{"price": "price_pro"}]}
    )
    fake.clock = ts(2025, 4, 16)  # half of April's 30 days remain

    updated = client.v1.subscriptions.update(
        sub.id,
        params={
            "items": [{"id": sub["items"].data[0].id, "price": "price_team"}],
            "proration_behavior": "always_invoice",
        },
    )

    invoice = client.v1.invoices.retrieve(updated.latest_invoice)  # type: ignore[arg-type]
    assert invoice.billing_reason == "subscription_update"
    assert sorted(line.amount for line in invoice.lines.data) == [-1500, 3000]
    assert invoice.amount_paid == 1500


def test_renew_bills_next_calendar_period_and_honours_cancel_at_period_end(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    fake.clock = ts(2025, 1, 31)
    fake.add_price("price_pro", 2000, "month")
    sub = client.v1.subscriptions.create(
        params={"customer": fake.add_customer()["id"], "items": [{"price": "price_pro"}]}
    )
    assert sub.to_dict()["current_period_end"] == ts(2025, 2, 28)

    renewed = fake.renew(sub.id)
    assert (renewed["current_period_start"], renewed["current_period_end"]) == (ts(2025, 2, 28), ts(2025, 3, 31))
    assert fake.clock == ts(2025, 2, 28)
    invoice = client.v1.invoices.retrieve(renewed["latest_invoice"])
    assert invoice.billing_reason == "subscription_cycle"
    assert (invoice.lines.data[0].period.start, invoice.lines.data[0].period.end) == (ts(2025, 2, 28), ts(2025, 3, 31))
    assert [e["type"] for e in fake.events()][-2:] == ["customer.subscription.updated", "invoice.paid"]
    assert fake.events("customer.subscription.updated")[-1]["data"]["previous_attributes"]["current_period_end"] == (
        ts(2025, 2, 28)
    )

    client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    ended = fake.renew(sub.id)
    assert (ended["status"], ended["ended_at"]) == ("canceled", ts(2025, 3, 31))
    assert fake.events()[-1]["type"] == "customer.subscription.deleted"
    assert len(client.v1.invoices.list(params={"subscription": sub.id}).data) == 2


def test_yearly_and_weekly_periods(fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.clock = ts(2024, 2, 29)
    fake.add_price("price_year", 20000, "year")
    fake.add_price("price_fortnight", 900, "week", interval_count=2)
    customer = fake.add_customer()["id"]

    yearly = client.v1.subscriptions.create(params={"customer": customer, "items": [{"price": "price_year"}]})
    fortnightly = client.v1.subscriptions.create(params={"customer": customer, "items": [{"price": "price_fortnight"}]})

    assert yearly["items"].data[0].current_period_end == ts(2025, 2, 28)
    assert fortnightly["items"].data[0].current_period_end == ts(2024, 3, 14)


def test_set_status_and_failed_renewal(fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.add_price("price_pro", 2000, "month")
    sub = client.v1.subscriptions.create(
        params={"customer": fake.add_customer()["id"], "items": [{"price": "price_pro"}]}
    )

    fake.renew(sub.id, paid=False)
    assert client.v1.subscriptions.retrieve(sub.id).status == "past_due"
    assert fake.events()[-1]["type"] == "invoice.payment_failed"

    fake.set_status(sub.id, "unpaid")
    last = fake.events()[-1]
    assert (last["type"], last["data"]["previous_attributes"]) == (
        "customer.subscription.updated",
        {"status": "past_due"},
    )
    fake.set_status(sub.id, "canceled")
    assert fake.events()[-1]["type"] == "customer.subscription.deleted"


def test_invoice_shape_for_newer_api_versions_and_expand(fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.invoice_subscription_on_parent_only = True
    fake.add_price("price_pro", 2000, "month")
    customer = client.v1.customers.create(params={"email": "x@example.com"})
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": "price_pro"}], "expand": ["latest_invoice", "customer"]}
    )

    assert sub.customer.email == "x@example.com"  # type: ignore[union-attr]
    invoice = sub.latest_invoice
    assert "subscription" not in invoice.to_dict()  # type: ignore[union-attr]
    assert invoice.parent.subscription_details.subscription == sub.id  # type: ignore[union-attr]


# --------------------------------------------------------------------------- checkout


def test_checkout_subscription_session_completes_into_a_subscription(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    fake.add_price("price_pro", 2000, "month")
    customer = client.v1.customers.create(params={"email": "buyer@example.com"})
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": "price_pro", "quantity": 1}],
            "success_url": "https://app.example/ok",
            "cancel_url": "https://app.example/cancel",
            "client_reference_id": "tenant_1",
            "metadata": {"op": "op_1"},
            "subscription_data": {"metadata": {"tenant": "tenant_1"}},
        }
    )
    assert (session.status, session.payment_status) == ("open", "unpaid")
    assert session.url == f"{fake.url}/checkout/{session.id}"
    expanded = client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["line_items"]})
    assert [(li.price.id, li.quantity) for li in expanded.line_items.data] == [("price_pro", 1)]  # type: ignore[union-attr]
    items = client.v1.checkout.sessions.line_items.list(session.id)
    assert items.data[0].amount_total == 2000

    fake.complete_checkout(session.id)

    done = client.v1.checkout.sessions.retrieve(session.id)
    assert (done.status, done.payment_status, done.url) == ("complete", "paid", None)
    sub = client.v1.subscriptions.retrieve(done.subscription)  # type: ignore[arg-type]
    assert (sub.customer, sub.metadata["tenant"]) == (customer.id, "tenant_1")
    assert client.v1.invoices.retrieve(done.invoice).billing_reason == "subscription_create"  # type: ignore[arg-type]
    assert [e["type"] for e in fake.pending_events()][-3:] == [
        "customer.subscription.created",
        "invoice.paid",
        "checkout.session.completed",
    ]
    completed = fake.events("checkout.session.completed")[0]["data"]["object"]
    assert (completed["client_reference_id"], completed["metadata"]) == ("tenant_1", {"op": "op_1"})
    with pytest.raises(ValueError):
        fake.complete_checkout(session.id)


def test_checkout_payment_mode_filters_and_expiry(fake: FakeStripe, client: stripe.StripeClient) -> None:
    fake.add_price("price_pack", 1000)
    fake.add_price("price_pro", 2000, "month")
    customer = client.v1.customers.create(params={})
    params: SessionCreateParams = {
        "mode": "payment",
        "customer": customer.id,
        "line_items": [{"price": "price_pack", "quantity": 3}],
        "success_url": "https://app.example/ok",
    }
    paid = client.v1.checkout.sessions.create(params=params)
    left = client.v1.checkout.sessions.create(params=params)
    assert paid.amount_total == 3000

    fake.complete_checkout(paid.id)
    client.v1.checkout.sessions.expire(left.id)

    complete = client.v1.checkout.sessions.list(params={"status": "complete", "customer": customer.id})
    assert [s.id for s in complete.data] == [paid.id]
    assert client.v1.checkout.sessions.retrieve(left.id).status == "expired"
    assert client.v1.checkout.sessions.retrieve(paid.id).payment_intent is not None
    with pytest.raises(stripe.InvalidRequestError, match="recurring"):
        client.v1.checkout.sessions.create(params={**params, "line_items": [{"price": "price_pro", "quantity": 1}]})
    with pytest.raises(stripe.InvalidRequestError, match="quantity"):
        client.v1.checkout.sessions.create(params={**params, "line_items": [{"price": "price_pack"}]})

    inline = client.v1.checkout.sessions.create(
        params={
            **params,
            "line_items": [
                {"price_data": {"currency": "usd", "unit_amount": 250, "product_data": {"name": "Pack"}}, "quantity": 2}
            ],
        }
    )
    [line] = client.v1.checkout.sessions.line_items.list(inline.id).data
    assert (line.amount_total, line.description, line.price.unit_amount) == (500, "Pack", 250)  # type: ignore[union-attr]
    assert line.price.active is False  # type: ignore[union-attr]


# --------------------------------------------------------------------------- idempotency


def test_same_idempotency_key_and_params_replays_without_creating_again(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    fake.add_price("price_pack", 1000)
    params: SessionCreateParams = {
        "mode": "payment",
        "line_items": [{"price": "price_pack", "quantity": 1}],
        "success_url": "https://app.example/ok",
    }
    before = fake.created.copy()

    first = client.v1.checkout.sessions.create(params=params, options={"idempotency_key": "op_42"})
    second = client.v1.checkout.sessions.create(params=params, options={"idempotency_key": "op_42"})

    assert first.id == second.id
    assert fake.created - before == Counter({"checkout.session": 1})
    assert second.last_response is not None
    assert second.last_response.headers.get("Idempotent-Replayed") == "true"
    assert [r.replayed for r in fake.requests if r.path == "/v1/checkout/sessions"] == [False, True]


def test_same_idempotency_key_with_other_params_is_an_idempotency_error(
    fake: FakeStripe, client: stripe.StripeClient
) -> None:
    client.v1.customers.create(params={"email": "a@example.com"}, options={"idempotency_key": "k1"})

    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.create(params={"email": "b@example.com"}, options={"idempotency_key": "k1"})
    with pytest.raises(stripe.IdempotencyError):
        client.v1.products.create(params={"name": "x"}, options={"idempotency_key": "k1"})
    assert fake.created["customer"] == 1
    assert fake.created["product"] == 0


# --------------------------------------------------------------------------- webhooks


class Receiver:
    """A stand-in webhook endpoint: verifies signatures with the stripe library, like the app must."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.gate = 0  # when set, hold requests until this many were in flight at once (proves concurrency)
        self.accepted: list[str] = []
        self.arrivals: list[float] = []
        self.rejected = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.app = Starlette(routes=[Route("/webhook", self.handle, methods=["POST"])])

    def reset(self) -> None:
        self.accepted.clear()
        self.arrivals.clear()
        self.rejected = self.max_in_flight = self.gate = 0

    async def handle(self, request: Request) -> Response:
        self.arrivals.append(time.monotonic())
        payload = await request.body()
        try:
            event = stripe.Webhook.construct_event(payload, request.headers.get("stripe-signature"), self.secret)
        except (stripe.SignatureVerificationError, ValueError):
            self.rejected += 1
            return JSONResponse({"error": "bad signature"}, status_code=400)
        self.in_flight += 1  # one event loop thread: no lock needed
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        deadline = time.monotonic() + 2
        while self.max_in_flight < self.gate and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self.in_flight -= 1
        self.accepted.append(event.id)
        return JSONResponse({"received": event.id})


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver(WEBHOOK_SECRET)
    with BackgroundServer(rec.app) as srv:
        yield rec, f"{srv.url}/webhook"


@pytest.fixture
def receiver(fake: FakeStripe, receiver_server: tuple[Receiver, str]) -> Receiver:
    rec, url = receiver_server
    rec.reset()
    fake.webhook_url = url
    fake.webhook_secret = WEBHOOK_SECRET
    return rec


def test_webhook_delivery_is_signed_and_verifiable(
    fake: FakeStripe, client: stripe.StripeClient, receiver: Receiver
) -> None:
    customer = client.v1.customers.create(params={"email": "w@example.com"})
    [event] = fake.pending_events()
    assert (event["type"], event["object"], event["livemode"]) == ("customer.created", "event", False)
    assert event["data"]["object"]["id"] == customer.id
    assert client.v1.events.retrieve(event["id"]).type == "customer.created"

    [refused] = fake.deliver(event["id"], secret="whsec_wrong")
    assert refused.status_code == 400
    assert [e["id"] for e in fake.pending_events()] == [event["id"]]  # stays pending, as Stripe would retry

    [ok] = fake.deliver(event["id"])
    assert ok.status_code == 200
    assert receiver.accepted == [event["id"]]
    assert fake.pending_events() == []

    assert fake.deliver(event, secret="whsec_wrong")[0].status_code == 400
    assert fake.deliver(event, timestamp=int(time.time()) - 3600)[0].status_code == 400
    assert fake.deliver(event, signature="t=1,v1=deadbeef")[0].status_code == 400
    # A body that differs from what was signed must fail, even with a valid-looking header.
    tampered = {**event, "type": "customer.deleted"}
    assert fake.deliver(tampered, signature=fake.sign(json.dumps(event, indent=2)))[0].status_code == 400
    assert receiver.rejected == 5
    # The library only rejects old timestamps; a future-dated one passes, so the app needs its own check.
    assert fake.deliver(event, timestamp=int(time.time()) + 3600)[0].status_code == 200


def test_webhooks_can_be_duplicated_concurrently_and_reordered(
    fake: FakeStripe, client: stripe.StripeClient, receiver: Receiver
) -> None:
    ids = [client.v1.customers.create(params={}).id for _ in range(3)]
    events = fake.pending_events()
    assert [e["data"]["object"]["id"] for e in events] == ids

    receiver.gate = 4
    responses = fake.deliver(events[0]["id"], times=4, concurrent=True)
    assert [r.status_code for r in responses] == [200] * 4
    assert receiver.max_in_flight == 4  # all four were being handled at once
    assert max(receiver.arrivals) - min(receiver.arrivals) < 0.15  # released together, not staggered
    assert receiver.accepted == [events[0]["id"]] * 4

    receiver.reset()
    fake.deliver_pending(order="reversed")
    assert receiver.accepted == [events[2]["id"], events[1]["id"]]
    assert fake.pending_events() == []
    assert [d.status_code for d in fake.deliveries] == [200] * 6


def test_many_threads_share_the_fake_safely(fake: FakeStripe) -> None:
    clients = [fake.client() for _ in range(4)]
    errors: list[BaseException] = []

    def work(c: stripe.StripeClient) -> None:
        try:
            for _ in range(5):
                c.v1.customers.create(params={})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert fake.created["customer"] == 20
    assert len({c["id"] for c in fake.objects("customer")}) == 20
    assert fake.errors == []
