"""POST /webhooks/stripe: verify, dedupe, apply; exactly once in effect.

1. The `stripe` library checks the signature (and its 300 s tolerance against the wall
   clock). The library accepts any timestamp in the future, so we also refuse one more
   than 300 s ahead, and apply both bounds against the app Clock (tests move it).
   Any failure -> 400, nothing read or written.
2. An event id already in the inbox -> 200 at once (Stripe stops retrying).
3. The handler's fetch re-reads the object from Stripe, outside any transaction.
4. One transaction: claim the event id in the inbox, apply the effect, record the outcome.
   A concurrent copy of the same event loses the claim and answers 200 as a duplicate;
   an exception rolls the claim back with the effect and answers 500 (503 + Retry-After when no
   database connection could be had), so Stripe redelivers.
Unknown event types are recorded (outcome "ignored") and acknowledged; an event our rules refuse
(a DomainError) is rolled back whole, recorded as "rejected" and acknowledged."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import stripe
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.core.clock import Clock
from app.core.db import unit_of_work
from app.core.errors import DomainError, Unavailable
from app.integrations.stripe import inbox
from app.integrations.stripe.client import JSON, StripeGateway, StripeNotConfigured
from app.integrations.stripe.handlers import HANDLERS, Outcome
from app.observability import metrics
from app.settings import Settings

log = logging.getLogger("meterkit.stripe")

TOLERANCE_SECONDS = 300
PATH = "/webhooks/stripe"


class BadWebhook(Exception):
    pass


def _timestamp(header: str) -> int:
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            return int(value)
    raise BadWebhook("no timestamp in Stripe-Signature")


def verify(payload: bytes, header: str | None, secret: str, now: datetime) -> JSON:
    """The verified event as a dict, or BadWebhook."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadWebhook("body is not UTF-8") from None
    try:
        stripe.WebhookSignature.verify_header(text, header, secret, tolerance=TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as exc:
        raise BadWebhook(str(exc).split("\n")[0]) from None
    assert header is not None
    try:
        stamp = _timestamp(header)
    except ValueError:
        raise BadWebhook("malformed timestamp in Stripe-Signature") from None
    now_s = now.timestamp()
    if stamp > now_s + TOLERANCE_SECONDS:
        raise BadWebhook("signature timestamp is in the future")
    if stamp < now_s - TOLERANCE_SECONDS:
        raise BadWebhook("signature timestamp is too old")
    try:
        event = json.loads(text)
    except ValueError:
        raise BadWebhook("body is not JSON") from None
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("id"), str)
        or not event["id"]
        or len(event["id"]) > 255
        or not isinstance(event.get("type"), str)
        or len(event["type"]) > 100
        or not isinstance(event.get("created"), int)
        or not isinstance(event.get("data"), dict)
        or not isinstance(event["data"].get("object"), dict)
    ):
        raise BadWebhook("not a Stripe event")
    return event


def process(
    engine: Engine, settings: Settings, clock: Clock, gateway: Callable[[], StripeGateway], event: JSON
) -> tuple[int, JSON]:
    """Handle one verified event; returns (HTTP status, body)."""
    event_id, type_ = event["id"], event["type"]
    with unit_of_work(engine, write=False) as s:
        if inbox.seen(s, event_id):
            return 200, {"received": True, "duplicate": True}
    handler = HANDLERS.get(type_)
    fetched: JSON = {}
    if handler is not None:
        try:
            fetched = handler.fetch(gateway(), event)
        except (stripe.StripeError, StripeNotConfigured) as exc:
            # Nothing written: Stripe redelivers, and the next attempt fetches again.
            log.warning("stripe event %s (%s): could not read from Stripe: %s", event_id, type_, exc)
            return 503, {"received": False, "error": "could not read the object from Stripe"}
    try:
        with unit_of_work(engine) as s:
            if not inbox.claim(s, clock, event_id=event_id, type_=type_, created=event["created"]):
                return 200, {"received": True, "duplicate": True}
            result = handler.apply(s, clock, settings, event, fetched) if handler else Outcome(None, "ignored")
            inbox.finish(s, event_id, tenant_id=result.tenant_id, outcome=result.outcome)
    except DomainError as exc:
        # A rule refused the change (say, a subscription to an archived plan). The effect was rolled
        # back whole; redelivering would be refused the same way for days, so record the refusal and
        # acknowledge. `meterkit stripe reconcile` applies it once the operator fixes the catalog.
        log.warning("stripe event %s (%s) refused: %s", event_id, type_, exc.message)
        with unit_of_work(engine) as s:
            if not inbox.claim(s, clock, event_id=event_id, type_=type_, created=event["created"]):
                return 200, {"received": True, "duplicate": True}
            inbox.finish(s, event_id, tenant_id=None, outcome="rejected")
        return 200, {"received": True, "outcome": "rejected", "reason": exc.message}
    log.info("stripe event %s (%s): %s", event_id, type_, result.outcome)
    return 200, {"received": True, "outcome": result.outcome}


def webhook_route(state: Any) -> Route:
    """state: the app's AppState (settings, engine, clock)."""
    cached: list[StripeGateway] = []

    def gateway() -> StripeGateway:
        if not cached:
            cached.append(StripeGateway.from_settings(state.settings))
        return cached[0]

    async def endpoint(request: Request) -> Response:
        settings: Settings = state.settings
        if not settings.stripe_webhook_secret:
            return JSONResponse({"error": "webhook secret not configured"}, status_code=503)
        payload = await request.body()
        try:
            event = verify(
                payload, request.headers.get("stripe-signature"), settings.stripe_webhook_secret, state.clock.now()
            )
        except BadWebhook as exc:
            metrics.stripe_webhook("unknown", "bad_signature")
            return JSONResponse({"error": str(exc)}, status_code=400)
        # A label only for the types meterkit handles: the set stays bounded whatever arrives.
        type_ = event["type"] if event["type"] in HANDLERS else "other"
        try:
            status, body = await run_in_threadpool(process, state.engine, settings, state.clock, gateway, event)
        except Unavailable:
            metrics.stripe_webhook(type_, "unavailable")
            raise  # nothing was written: the app answers 503 + Retry-After, and Stripe redelivers
        except Exception:
            metrics.stripe_webhook(type_, "error")
            log.exception("stripe event %s (%s) failed; nothing was written", event.get("id"), event.get("type"))
            return JSONResponse({"received": False, "error": "internal error"}, status_code=500)
        outcome = "duplicate" if body.get("duplicate") else str(body.get("outcome") or "fetch_failed")
        metrics.stripe_webhook(type_, outcome)
        return JSONResponse(body, status_code=status)

    return Route(PATH, endpoint, methods=["POST"])
