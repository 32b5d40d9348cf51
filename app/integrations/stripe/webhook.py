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
(a DomainError) is rolled back whole, recorded as "rejected" and acknowledged.

Three endpoints, one per kind of Stripe account an event comes through (docs/organization-stripe.md):
  /webhooks/stripe               the platform's own account (METERKIT_STRIPE_WEBHOOK_SECRET);
  /webhooks/stripe/connect       the platform's Connect endpoint: every connected account's events,
                                 each naming its `account` (METERKIT_STRIPE_CONNECT_WEBHOOK_SECRET);
  /webhooks/stripe/{org}         one organization's own account, verified with the signing secret the
                                 organization stored (restricted-key connection).
An event applies only to objects on the account it came through: one naming an object we know on
another account (handlers.crossing) changes nothing and is recorded as "refused"."""

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
from app.core.ids import parse_id
from app.integrations.stripe import accounts, inbox
from app.integrations.stripe.client import JSON, StripeGateway, StripeNotConfigured
from app.integrations.stripe.handlers import HANDLERS, Outcome, crossing
from app.integrations.stripe.repository import PLATFORM
from app.observability import metrics
from app.settings import Settings

log = logging.getLogger("meterkit.stripe")

TOLERANCE_SECONDS = 300
PATH = "/webhooks/stripe"
CONNECT_PATH = "/webhooks/stripe/connect"
ORGANIZATION_PATH = "/webhooks/stripe/{organization}"


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


def inbox_key(account: str, event_id: str) -> str:
    """The platform's events keep Stripe's id; an organization's are namespaced by the organization,
    so no event id one account signs can stand in for another account's event."""
    return event_id if account == PLATFORM else f"{account}:{event_id}"


def refuse(engine: Engine, clock: Clock, event: JSON, *, key: str, account: str | None, why: str) -> tuple[int, JSON]:
    """Record the event as refused (nothing else written) and acknowledge it: redelivering it changes nothing."""
    log.warning("stripe event %s (%s) refused: %s", event["id"], event["type"], why)
    with unit_of_work(engine) as s:
        if not inbox.claim(
            s, clock, event_id=key, type_=event["type"], created=event["created"], organization_id=account
        ):
            return 200, {"received": True, "duplicate": True}
        inbox.finish(s, key, tenant_id=None, outcome="refused")
    return 200, {"received": True, "outcome": "refused"}


def process(
    engine: Engine,
    settings: Settings,
    clock: Clock,
    gateway: Callable[[], StripeGateway],
    event: JSON,
    account: str = PLATFORM,
) -> tuple[int, JSON]:
    """Handle one verified event that came through `account` (PLATFORM or an organization's id);
    returns (HTTP status, body)."""
    type_ = event["type"]
    event_id = inbox_key(account, event["id"])
    org = None if account == PLATFORM else account
    with unit_of_work(engine, write=False) as s:
        if inbox.seen(s, event_id):
            return 200, {"received": True, "duplicate": True}
    if account == PLATFORM and event.get("account") is not None:
        # A connected account's event on the platform's own endpoint: it is no event of this account.
        return refuse(engine, clock, event, key=event_id, account=None, why="a Connect event on the platform endpoint")
    handler = HANDLERS.get(type_)
    if handler is not None:
        # The signed payload is checked before anything is read from Stripe with this account's
        # credentials (and again below, with what was read): a forged event is refused and recorded
        # without a round trip, and an object of another account is never fetched.
        with unit_of_work(engine, write=False) as s:
            early = crossing(s, account, event, {})
        if early is not None:
            return refuse(engine, clock, event, key=event_id, account=org, why=early)
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
            if not inbox.claim(s, clock, event_id=event_id, type_=type_, created=event["created"], organization_id=org):
                return 200, {"received": True, "duplicate": True}
            why = crossing(s, account, event, fetched) if handler else None
            if why is not None:
                result = Outcome(None, "refused")
            elif handler is not None:
                result = handler.apply(s, clock, settings, event, fetched, account)
            else:
                result = Outcome(None, "ignored")
            inbox.finish(s, event_id, tenant_id=result.tenant_id, outcome=result.outcome)
    except DomainError as exc:
        # A rule refused the change (say, a subscription to an archived plan). The effect was rolled
        # back whole; redelivering would be refused the same way for days, so record the refusal and
        # acknowledge. `meterkit stripe reconcile` applies it once the operator fixes the catalog.
        log.warning("stripe event %s (%s) refused: %s", event_id, type_, exc.message)
        with unit_of_work(engine) as s:
            if not inbox.claim(s, clock, event_id=event_id, type_=type_, created=event["created"], organization_id=org):
                return 200, {"received": True, "duplicate": True}
            inbox.finish(s, event_id, tenant_id=None, outcome="rejected")
        return 200, {"received": True, "outcome": "rejected", "reason": exc.message}
    if why is not None:
        log.warning("stripe event %s (%s) through %s refused: %s", event["id"], type_, account, why)
    log.info("stripe event %s (%s): %s", event_id, type_, result.outcome)
    return 200, {"received": True, "outcome": result.outcome}


async def _receive(
    state: Any,
    request: Request,
    secret: str,
    gateway: Callable[[], StripeGateway],
    account: Callable[[JSON], tuple[str | None, str | None]],
) -> Response:
    """Verify with `secret`, find the account the event came through (`account` answers it, or None
    and why not), and process. The secret never reaches a log line or an answer."""
    payload = await request.body()
    try:
        event = verify(payload, request.headers.get("stripe-signature"), secret, state.clock.now())
    except BadWebhook as exc:
        metrics.stripe_webhook("unknown", "bad_signature")
        return JSONResponse({"error": str(exc)}, status_code=400)
    # A label only for the types meterkit handles: the set stays bounded whatever arrives.
    type_ = event["type"] if event["type"] in HANDLERS else "other"
    source, why = account(event)
    try:
        if source is None:
            key = f"unknown:{event['id']}"[:255]
            status, body = await run_in_threadpool(
                refuse, state.engine, state.clock, event, key=key, account=None, why=why or "unknown account"
            )
        else:
            status, body = await run_in_threadpool(
                process, state.engine, state.settings, state.clock, gateway, event, source
            )
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


def webhook_routes(state: Any) -> list[Route]:
    """state: the app's AppState (settings, engine, clock). The Connect route comes before the
    organization's: `connect` is no organization id."""
    cached: list[StripeGateway] = []

    def platform_gateway() -> StripeGateway:
        if not cached:
            cached.append(StripeGateway.from_settings(state.settings))
        return cached[0]

    async def platform(request: Request) -> Response:
        settings: Settings = state.settings
        if not settings.stripe_webhook_secret:
            return JSONResponse({"error": "webhook secret not configured"}, status_code=503)
        return await _receive(
            state, request, settings.stripe_webhook_secret, platform_gateway, lambda e: (PLATFORM, None)
        )

    async def connect(request: Request) -> Response:
        settings: Settings = state.settings
        if not settings.stripe_connect_webhook_secret:
            return JSONResponse({"error": "Connect webhook secret not configured"}, status_code=503)
        found: dict[str, str] = {}

        def source(event: JSON) -> tuple[str | None, str | None]:
            acct = event.get("account")
            if not isinstance(acct, str) or not acct:
                return None, "a Connect event names no account"
            org = accounts.organization_for_account(state.engine, acct)
            if org is None:
                return None, "no organization connected this account by Connect"
            found["org"] = org
            return org, None

        def gateway() -> StripeGateway:
            gw = accounts.organization_gateway(state.engine, state.settings, found["org"])
            if gw is None:
                raise StripeNotConfigured("the organization is no longer connected")
            return gw

        return await _receive(state, request, settings.stripe_connect_webhook_secret, gateway, source)

    async def organization(request: Request) -> Response:
        org = request.path_params["organization"]
        try:
            parse_id(org, "org")
        except DomainError:
            return JSONResponse({"error": "no such endpoint"}, status_code=404)
        try:
            secret = await run_in_threadpool(accounts.webhook_secret, state.engine, state.settings, org)
        except DomainError as exc:  # no server key opens the stored secret: Stripe retries later
            log.error("stripe webhook for %s: %s", org, exc.message)
            return JSONResponse({"error": "the endpoint's secret cannot be read"}, status_code=503)
        if secret is None:
            # No organization, or none with a restricted-key connection: the same answer for both.
            return JSONResponse({"error": "no such endpoint"}, status_code=404)

        def gateway() -> StripeGateway:
            gw = accounts.organization_gateway(state.engine, state.settings, org)
            if gw is None:
                raise StripeNotConfigured("the organization is no longer connected")
            return gw

        def source(event: JSON) -> tuple[str | None, str | None]:
            if event.get("account") is not None:
                return None, "a connected account's event on an organization's own endpoint"
            return org, None

        return await _receive(state, request, secret, gateway, source)

    return [
        Route(PATH, platform, methods=["POST"]),
        Route(CONNECT_PATH, connect, methods=["POST"]),
        Route(ORGANIZATION_PATH, organization, methods=["POST"]),
    ]
