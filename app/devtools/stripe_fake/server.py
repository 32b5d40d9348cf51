"""A local, stateful fake of the Stripe HTTP API: the test suite's Stripe, and `meterkit dev stripe`.

Tests drive it through the real ``stripe`` library over plain HTTP, so request
encoding, idempotency headers, error mapping and object parsing are the
library's own. State lives in memory here: this process plays the external
system. Only what meterkit uses is implemented; anything else is answered with
a Stripe-shaped error rather than silently ignored, so a test cannot pass by
accident against behaviour the fake does not have.
"""

from __future__ import annotations

import calendar
import copy
import fnmatch
import html
import json
import re
import secrets
import string
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

import httpx
import requests
import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from app.devtools.serving import BackgroundServer
from app.devtools.stripe_fake.meters import MetersMixin

JSON = dict[str, Any]

__all__ = ["BackgroundServer", "Delivery", "FakeStripe", "RecordedRequest", "StripeApiError", "decode_form"]


# --------------------------------------------------------------------------- serving

# BackgroundServer lives in app/devtools/serving.py, shared with the end-to-end tests.


# --------------------------------------------------------------------------- errors and params


class StripeApiError(Exception):
    """An error answered in Stripe's JSON shape, so the library raises its matching exception."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        error: JSON = {"type": type_, "message": message}
        if code is not None:
            error["code"] = code
        if param is not None:
            error["param"] = param
        self.body: JSON = {"error": error}


def _missing(param: str) -> StripeApiError:
    return StripeApiError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def _invalid(param: str, message: str) -> StripeApiError:
    return StripeApiError(400, message, code="parameter_invalid", param=param)


def _no_such(kind: str, obj_id: str, *, param: str = "id", status: int = 404) -> StripeApiError:
    return StripeApiError(status, f"No such {kind}: '{obj_id}'", code="resource_missing", param=param)


def _check_params(params: Mapping[str, Any], allowed: Iterable[str], prefix: str | None = None) -> None:
    allowed = set(allowed)
    for key in params:
        if key not in allowed:
            name = f"{prefix}[{key}]" if prefix else key
            raise StripeApiError(
                400,
                f"Received unknown parameter: {name} (the fake Stripe server does not support it)",
                code="parameter_unknown",
                param=name,
            )


def _int(value: Any, param: str, *, minimum: int | None = 0) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise StripeApiError(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param) from None
    if minimum is not None and number < minimum:
        raise StripeApiError(
            400,
            f"This value must be greater than or equal to {minimum}.",
            code="parameter_invalid_integer",
            param=param,
        )
    return number


def _bool(value: Any, param: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise _invalid(param, f"Invalid boolean: {value}")


def _str(params: Mapping[str, Any], key: str, *, required: bool = False, prefix: str | None = None) -> str | None:
    name = f"{prefix}[{key}]" if prefix else key
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise _missing(name)
        return None
    if not isinstance(value, str):
        raise _invalid(name, f"Invalid string: {name} must be a string")
    return value


def _dicts(value: Any, param: str) -> list[JSON]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _invalid(param, f"Invalid array: {param} must be an array of hashes")
    return value


def _merge_metadata(current: Mapping[str, str], update: Any, param: str = "metadata") -> dict[str, str]:
    """Stripe semantics: keys merge, an empty value deletes a key, `metadata=""` clears all."""
    if update is None:
        return dict(current)
    if update == "":
        return {}
    if not isinstance(update, dict):
        raise _invalid(param, f"Invalid hash: {param} must be a hash")
    merged = dict(current)
    for key, value in update.items():
        if not isinstance(value, str):
            raise _invalid(f"{param}[{key}]", "Metadata values must be strings.")
        if len(key) > 40 or len(value) > 500:
            raise _invalid(f"{param}[{key}]", "Metadata keys are limited to 40 and values to 500 characters.")
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > 50:
        raise _invalid(param, "You can have at most 50 metadata keys.")
    return merged


_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SUBKEY = re.compile(r"\[([^\[\]]*)\]")
# Hashes whose keys are user data; digit keys there must stay keys, not become list indexes.
_FREEFORM_HASHES = frozenset({"metadata"})


def decode_form(body: str) -> JSON:
    """Decode Stripe's form encoding (``items[0][price]=x&metadata[k]=v&expand[]=y``) into dicts and lists."""
    root: JSON = {}
    for raw_key, value in parse_qsl(body, keep_blank_values=True):
        match = _KEY.fullmatch(raw_key)
        if match is None:
            raise StripeApiError(400, f"Invalid parameter name: {raw_key}", param=raw_key)
        parts = [match.group(1), *_SUBKEY.findall(match.group(2))]
        node = root
        for depth, part in enumerate(parts):
            if part == "":
                part = str(len(node))  # `key[]` appends
            if depth == len(parts) - 1:
                if isinstance(node.get(part), dict):
                    raise StripeApiError(400, f"Invalid parameter: {raw_key} mixes a value and a hash", param=raw_key)
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise StripeApiError(400, f"Invalid parameter: {raw_key} mixes a value and a hash", param=raw_key)
                node = child
    decoded = _listify(root, freeform=True)
    assert isinstance(decoded, dict)
    return decoded


def _listify(node: JSON, *, freeform: bool = False) -> Any:
    out = {
        key: _listify(value, freeform=key in _FREEFORM_HASHES) if isinstance(value, dict) else value
        for key, value in node.items()
    }
    if not freeform and out and all(key.isdigit() for key in out):
        return [out[key] for key in sorted(out, key=int)]
    return out


# --------------------------------------------------------------------------- time


_INTERVALS = ("day", "week", "month", "year")


def _add_interval(start: int, interval: str, count: int) -> int:
    """Calendar arithmetic like Stripe's: Jan 31 + 1 month is Feb 28/29, and the day comes back later."""
    if interval == "day":
        return start + 86_400 * count
    if interval == "week":
        return start + 7 * 86_400 * count
    months = count * (12 if interval == "year" else 1)
    moment = datetime.fromtimestamp(start, UTC)
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


_ID_ALPHABET = string.ascii_letters + string.digits


def _new_id(prefix: str) -> str:
    return f"{prefix}_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RecordedRequest:
    """One API request the fake answered, for assertions like "exactly one POST /v1/checkout/sessions"."""

    method: str
    path: str
    params: JSON
    idempotency_key: str | None
    status: int
    replayed: bool


@dataclass(frozen=True)
class Delivery:
    """One webhook POST the fake made."""

    event_id: str | None
    status_code: int


@dataclass(frozen=True)
class _StoredResponse:
    fingerprint: tuple[str, str, str]
    status: int
    body: str
    request_id: str


@dataclass(frozen=True)
class _RequestContext:
    request_id: str
    idempotency_key: str | None


_SUBSCRIPTION_STATUSES = frozenset(
    {"incomplete", "incomplete_expired", "trialing", "active", "past_due", "canceled", "unpaid", "paused"}
)
_PRORATION_BEHAVIORS = frozenset({"create_prorations", "none", "always_invoice"})
_LIST_PARAMS = frozenset({"limit", "starting_after", "ending_before", "expand"})

Handler = Callable[..., JSON]


# --------------------------------------------------------------------------- the fake


class FakeStripe(MetersMixin):
    """A stateful fake Stripe API on 127.0.0.1, plus plain-Python controls for tests.

    Use ``with FakeStripe() as fake:`` or ``start()``/``stop()``; talk to it with
    ``fake.client()``. Everything that "happens on Stripe's side" (a customer
    paying, a renewal, a status change, webhook delivery) is a method here, so
    tests decide when it happens and in which order.
    """

    DEFAULT_WEBHOOK_SECRET = "whsec_fake_test_secret"

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
        clock: int | None = None,
        api_version: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        # One lock serialises API requests (uvicorn thread) and test controls (test thread).
        self._lock = threading.RLock()
        self._sessions: list[requests.Session] = []
        self._http: httpx.Client | None = None  # for webhook deliveries; building one costs ~10 ms
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = self._build_routes()
        self._server = BackgroundServer(
            Starlette(
                routes=[
                    Route("/checkout/{session_id}", self._hosted_checkout_page, methods=["GET"]),
                    Route("/checkout/{session_id}/{action}", self._hosted_checkout_action, methods=["POST"]),
                    Route("/{path:path}", self._endpoint, methods=["GET", "POST", "DELETE"]),
                ]
            ),
            host=host,
            port=port,
        )
        self._initial = (webhook_url, webhook_secret, clock, api_version)
        self.reset()

    # ----------------------------------------------------------------- lifecycle

    def reset(self) -> None:
        """Forget every object, event, request and setting, keeping the server running."""
        webhook_url, webhook_secret, clock, api_version = self._initial
        # Clients from before the reset still work (requests reconnects); this just drops idle connections.
        for session in self._sessions:
            session.close()
        self._sessions.clear()
        with self._lock:
            self.webhook_url: str | None = webhook_url
            self.webhook_secret: str = webhook_secret
            self.api_version: str = api_version or stripe.api_version
            # Both shapes exist across API versions: newer ones moved periods onto items and
            # the invoice's subscription under `parent`. Tests flip these to cover both.
            self.period_on_items_only = False
            self.invoice_subscription_on_parent_only = False
            self._clock = int(time.time()) if clock is None else int(clock)
            self._objects: dict[str, JSON] = {}
            self._ids_by_type: dict[str, list[str]] = {}
            self._checkout_line_items: dict[str, list[JSON]] = {}
            self._checkout_extra: dict[str, JSON] = {}
            self._billing_anchor: dict[str, tuple[int, int]] = {}  # subscription id -> (anchor, cycle)
            self._idempotency: dict[tuple[str, str], _StoredResponse] = {}
            self._undelivered: dict[str, None] = {}  # ordered set of event ids
            self._invoice_seq = 0
            self._context: _RequestContext | None = None
            self.created: Counter[str] = Counter()
            self.requests: list[RecordedRequest] = []
            self.deliveries: list[Delivery] = []
            self.errors: list[str] = []
            self.meter_events: list[JSON] = []

    def start(self) -> FakeStripe:
        self._server.start()
        return self

    def stop(self) -> None:
        for session in self._sessions:
            session.close()
        self._sessions.clear()
        if self._http is not None:
            self._http.close()
            self._http = None
        self._server.stop()

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self._server.url

    def client(
        self,
        *,
        api_key: str = "sk_test_fake",
        stripe_version: str | None = None,
        max_network_retries: int = 0,
    ) -> stripe.StripeClient:
        """A real StripeClient whose every base address points at this fake."""
        session = requests.Session()
        # The fake is on loopback; an HTTP(S)_PROXY from the environment must not intercept it.
        session.trust_env = False
        self._sessions.append(session)
        url = self.url
        return stripe.StripeClient(
            api_key,
            base_addresses={"api": url, "connect": url, "files": url, "meter_events": url},
            stripe_version=stripe_version,
            max_network_retries=max_network_retries,
            http_client=stripe.RequestsClient(session=session, timeout=10),
        )

    # ----------------------------------------------------------------- time

    def forget_idempotency_keys(self) -> None:
        """What Stripe does to keys older than 24 hours: a replay becomes a new request."""
        with self._lock:
            self._idempotency.clear()

    @property
    def clock(self) -> int:
        """Unix time the fake uses for `created`, periods and events. It only moves when a test moves it."""
        return self._clock

    @clock.setter
    def clock(self, value: int) -> None:
        with self._lock:
            self._clock = int(value)

    def advance(self, seconds: int = 0, *, days: int = 0, hours: int = 0, minutes: int = 0) -> int:
        with self._lock:
            self._clock += seconds + 60 * minutes + 3600 * hours + 86_400 * days
            return self._clock

    # ----------------------------------------------------------------- inspection

    def get(self, object_id: str) -> JSON:
        """Any stored object by id, as the API would render it now."""
        with self._lock:
            if object_id not in self._objects:
                raise KeyError(object_id)
            return self._render(self._objects[object_id])

    def objects(self, object_type: str) -> list[JSON]:
        """All stored objects of a type (e.g. "subscription", "checkout.session"), oldest first."""
        with self._lock:
            return [self._render(self._objects[i]) for i in self._ids_by_type.get(object_type, [])]

    def events(self, type_pattern: str | None = None) -> list[JSON]:
        """Every event emitted so far, oldest first; `type_pattern` may use `*` like "customer.subscription.*"."""
        return [e for e in self.objects("event") if type_pattern is None or fnmatch.fnmatch(e["type"], type_pattern)]

    def pending_events(self) -> list[JSON]:
        """Events not yet successfully delivered to the webhook, in emission order."""
        with self._lock:
            return [copy.deepcopy(self._objects[i]) for i in self._undelivered]

    # ----------------------------------------------------------------- seeding

    def add_price(
        self,
        price_id: str,
        unit_amount: int,
        interval: str | None = None,
        *,
        currency: str = "usd",
        interval_count: int = 1,
        product: str | None = None,
        product_name: str | None = None,
        lookup_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        meter: str | None = None,
    ) -> JSON:
        """Create a price with a chosen id (real Stripe picks ids itself), creating its product if needed.
        With `meter` (a Billing Meter's id) the price is metered: usage comes from the meter's events."""
        if interval is not None and interval not in _INTERVALS:
            raise ValueError(f"interval must be one of {_INTERVALS}")
        with self._lock:
            if price_id in self._objects:
                raise ValueError(f"{price_id} already exists")
            product_id = product or "prod_" + price_id.removeprefix("price_")
            if product_id not in self._objects:
                self._create_product(product_id, product_name or price_id, None, {})
            recurring = None
            if interval is not None:
                recurring = {"interval": interval, "interval_count": interval_count, "usage_type": "licensed"}
                if meter is not None:
                    recurring.update(usage_type="metered", meter=meter)
            price = self._create_price(
                product_id=product_id,
                currency=currency,
                unit_amount=unit_amount,
                recurring=recurring,
                nickname=None,
                lookup_key=lookup_key,
                metadata=dict(metadata or {}),
                price_id=price_id,
            )
            return self._render(price)

    def add_customer(
        self,
        customer_id: str | None = None,
        *,
        email: str | None = None,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> JSON:
        """Create a customer directly (optionally with a chosen id); emits customer.created like the API."""
        with self._lock:
            if customer_id is not None and customer_id in self._objects:
                raise ValueError(f"{customer_id} already exists")
            customer = self._create_customer(
                {"email": email, "name": name, "metadata": dict(metadata or {})}, customer_id=customer_id
            )
            return self._render(customer)

    # ----------------------------------------------------------------- things that happen on Stripe's side

    def complete_checkout(self, session_id: str) -> JSON:
        """The customer pays: the session completes; in subscription mode the subscription and invoice appear."""
        with self._lock:
            session = self._get("checkout.session", session_id, "checkout.session")
            if session["status"] != "open":
                raise ValueError(f"checkout session {session_id} is {session['status']}, not open")
            if self._clock >= session["expires_at"]:
                raise ValueError(f"checkout session {session_id} expired at {session['expires_at']} (fake.clock)")
            extra = self._checkout_extra[session_id]
            line_items = self._checkout_line_items[session_id]
            customer_id = session["customer"]
            if customer_id is None and (session["mode"] == "subscription" or extra["customer_creation"] == "always"):
                customer = self._create_customer({"email": session["customer_email"]})
                customer_id = customer["id"]
            if session["mode"] == "subscription":
                recurring: list[tuple[JSON, int, JSON]] = [
                    (li["price"], li["quantity"], {}) for li in line_items if li["price"]["recurring"]
                ]
                one_time = [(li["price"], li["quantity"]) for li in line_items if not li["price"]["recurring"]]
                subscription = self._create_subscription(
                    customer_id, recurring, extra["subscription_metadata"], one_time_lines=one_time
                )
                session["subscription"] = subscription["id"]
                session["invoice"] = subscription["latest_invoice"]
            else:
                session["payment_intent"] = _new_id("pi")
            paying_customer = self._objects.get(customer_id) if customer_id else None
            session.update(
                status="complete",
                payment_status="paid",
                url=None,
                customer=customer_id,
                customer_details={"email": (paying_customer or {}).get("email") or session["customer_email"]},
            )
            self._emit("checkout.session.completed", session)
            return self._render(session)

    def expire_checkout(self, session_id: str) -> JSON:
        with self._lock:
            return self._render(self._expire_checkout(self._get("checkout.session", session_id, "checkout.session")))

    def renew(self, subscription_id: str, *, paid: bool = True) -> JSON:
        """The period ends: bill the next one (or end the subscription if it was set to cancel at period end).

        The clock moves to the old period's end if it is earlier, since that is when renewal happens.
        With paid=False the invoice stays open, invoice.payment_failed is emitted and the status is past_due.
        """
        with self._lock:
            sub = self._get("subscription", subscription_id, "subscription")
            if sub["status"] in ("canceled", "incomplete_expired"):
                raise ValueError(f"subscription {subscription_id} is {sub['status']}")
            old_end = sub["current_period_end"]
            self._clock = max(self._clock, old_end)
            if sub["cancel_at_period_end"]:
                # canceled_at keeps the moment cancellation was requested, as on Stripe.
                self._cancel(
                    sub, ended_at=old_end, canceled_at=sub["canceled_at"] or old_end, reason="cancellation_requested"
                )
                return self._render(sub)
            before = self._render(sub)
            anchor, cycle = self._billing_anchor[subscription_id]
            recurring = sub["items"]["data"][0]["price"]["recurring"]
            new_end = _add_interval(anchor, recurring["interval"], recurring["interval_count"] * (cycle + 2))
            self._billing_anchor[subscription_id] = (anchor, cycle + 1)
            previous_period = (sub["current_period_start"], old_end)
            self._set_period(sub, old_end, new_end)
            invoice = self._create_invoice(
                sub,
                "subscription_cycle",
                [
                    self._invoice_line(sub, item, self._amount(item), (old_end, new_end))
                    for item in sub["items"]["data"]
                ],
                period=previous_period,
                paid=paid,
            )
            sub["latest_invoice"] = invoice["id"]
            if not paid:
                sub["status"] = "past_due"
            elif sub["status"] in ("past_due", "unpaid", "trialing"):
                sub["status"] = "active"
            self._emit_updated(sub, before)
            self._emit("invoice.paid" if paid else "invoice.payment_failed", invoice)
            return self._render(sub)

    def set_status(self, subscription_id: str, status: str) -> JSON:
        """Force a status (e.g. past_due after failed payments); "canceled" ends it like Stripe would."""
        if status not in _SUBSCRIPTION_STATUSES:
            raise ValueError(f"unknown subscription status {status!r}")
        with self._lock:
            sub = self._get("subscription", subscription_id, "subscription")
            if status == "canceled":
                if sub["status"] != "canceled":
                    self._cancel(sub, ended_at=self._clock, canceled_at=self._clock, reason="payment_failed")
                return self._render(sub)
            before = self._render(sub)
            sub["status"] = status
            self._emit_updated(sub, before)
            return self._render(sub)

    # ----------------------------------------------------------------- webhooks

    def sign(self, payload: str | bytes, timestamp: int | None = None, secret: str | None = None) -> str:
        """A Stripe-Signature header for payload; tests pass odd timestamps or secrets to make bad ones."""
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        # Real wall-clock time by default: receivers check tolerance against time.time(), not fake.clock.
        stamp = int(time.time()) if timestamp is None else timestamp
        return stripe.WebhookSignature.generate_signature_header(
            text, secret if secret is not None else self.webhook_secret, timestamp=stamp
        )

    def deliver(
        self,
        event: Mapping[str, Any] | str,
        *,
        times: int = 1,
        concurrent: bool = False,
        timestamp: int | None = None,
        secret: str | None = None,
        signature: str | None = None,
    ) -> list[httpx.Response]:
        """POST an event (an id, or any mapping a test crafted) to webhook_url, signed like Stripe.

        `times` repeats it; `concurrent=True` releases all copies at once from threads.
        `signature` replaces the Stripe-Signature header verbatim. Responses come back in send order.
        Like Stripe, an event counts as delivered only once some copy got a 2xx; until then it stays
        pending, so `deliver_pending()` plays the role of Stripe's retries.
        """
        if self.webhook_url is None:
            raise RuntimeError("set fake.webhook_url before delivering events")
        url = self.webhook_url
        with self._lock:
            body = self._objects[event] if isinstance(event, str) else event
            # Real Stripe sends pretty-printed JSON; signatures cover the exact bytes.
            payload = json.dumps(dict(body), indent=2)
            event_id = body.get("id") if isinstance(body.get("id"), str) else None
        header = signature if signature is not None else self.sign(payload, timestamp, secret)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": header,
        }
        with self._lock:
            if self._http is None:
                # Pooled and thread-safe; the pool opens a connection per concurrent copy.
                self._http = httpx.Client(timeout=10, trust_env=False, limits=httpx.Limits(max_connections=None))
            http = self._http
        if concurrent and times > 1:
            responses = self._post_concurrently(http, url, payload, headers, times)
        else:
            responses = [http.post(url, content=payload, headers=headers) for _ in range(times)]
        with self._lock:
            if event_id is not None and any(r.is_success for r in responses):
                self._undelivered.pop(event_id, None)
            self.deliveries.extend(Delivery(event_id, r.status_code) for r in responses)
        return responses

    def deliver_pending(
        self, order: Literal["reversed"] | Sequence[str | Mapping[str, Any]] | None = None
    ) -> list[httpx.Response]:
        """Deliver undelivered events one by one: emission order, "reversed", or an explicit list of events/ids."""
        pending: Sequence[str | Mapping[str, Any]]
        if order is None:
            pending = [e["id"] for e in self.pending_events()]
        elif order == "reversed":
            pending = [e["id"] for e in reversed(self.pending_events())]
        else:
            pending = list(order)
        responses: list[httpx.Response] = []
        for event in pending:
            responses.extend(self.deliver(event))
        return responses

    @staticmethod
    def _post_concurrently(
        http: httpx.Client, url: str, payload: str, headers: dict[str, str], times: int
    ) -> list[httpx.Response]:
        barrier = threading.Barrier(times)
        results: list[httpx.Response | BaseException | None] = [None] * times

        def send(index: int) -> None:
            try:
                barrier.wait(timeout=10)
                results[index] = http.post(url, content=payload, headers=headers)
            except BaseException as exc:  # handed to the caller below
                results[index] = exc

        threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(times)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        responses: list[httpx.Response] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            if result is None:
                raise RuntimeError("a concurrent webhook delivery did not finish")
            responses.append(result)
        return responses

    # ----------------------------------------------------------------- HTTP plumbing

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], Handler]]:
        table: list[tuple[str, str, Handler]] = [
            ("POST", "/v1/customers", self._customers_create),
            ("GET", "/v1/customers", self._customers_list),
            ("GET", "/v1/customers/{id}", self._customers_retrieve),
            ("POST", "/v1/customers/{id}", self._customers_update),
            ("POST", "/v1/products", self._products_create),
            ("GET", "/v1/products", self._products_list),
            ("GET", "/v1/products/{id}", self._products_retrieve),
            ("POST", "/v1/prices", self._prices_create),
            ("GET", "/v1/prices", self._prices_list),
            ("GET", "/v1/prices/{id}", self._prices_retrieve),
            ("POST", "/v1/subscriptions", self._subscriptions_create),
            ("GET", "/v1/subscriptions", self._subscriptions_list),
            ("GET", "/v1/subscriptions/{id}", self._subscriptions_retrieve),
            ("POST", "/v1/subscriptions/{id}", self._subscriptions_update),
            ("DELETE", "/v1/subscriptions/{id}", self._subscriptions_cancel),
            ("POST", "/v1/checkout/sessions", self._checkout_create),
            ("GET", "/v1/checkout/sessions", self._checkout_list),
            ("GET", "/v1/checkout/sessions/{id}", self._checkout_retrieve),
            ("GET", "/v1/checkout/sessions/{id}/line_items", self._checkout_line_items_list),
            ("POST", "/v1/checkout/sessions/{id}/expire", self._checkout_expire),
            ("GET", "/v1/invoices", self._invoices_list),
            ("GET", "/v1/invoices/{id}", self._invoices_retrieve),
            ("GET", "/v1/invoices/{id}/lines", self._invoice_lines_list),
            ("GET", "/v1/events", self._events_list),
            ("GET", "/v1/events/{id}", self._events_retrieve),
            ("POST", "/v1/billing/meters", self._meters_create),
            ("GET", "/v1/billing/meters/{id}", self._meters_retrieve),
            ("GET", "/v1/billing/meters/{id}/event_summaries", self._meter_event_summaries),
            ("POST", "/v1/billing/meter_events", self._meter_events_create),
        ]
        return [
            (method, re.compile("^" + template.replace("{id}", "(?P<id>[^/]+)") + "$"), handler)
            for method, template, handler in table
        ]

    async def _endpoint(self, request: Request) -> Response:
        body = (await request.body()).decode("utf-8", "replace")
        status, text, headers = self._handle(request.method, request.url.path, request.url.query, body, request.headers)
        return Response(text, status_code=status, headers=headers, media_type="application/json")

    async def _hosted_checkout_page(self, request: Request) -> Response:
        # Stands in for checkout.stripe.com so the session `url` leads somewhere real: while the
        # session is open, "Pay" completes it (as complete_checkout) and "Cancel" goes back.
        with self._lock:
            session = self._objects.get(request.path_params["session_id"])
            lines = self._checkout_line_items.get(request.path_params["session_id"], [])
        if session is None or session.get("object") != "checkout.session":
            return HTMLResponse("<h1>No such checkout session</h1>", status_code=404)
        sid = html.escape(session["id"])
        items = "".join(
            f"<li>{int(li['quantity'])} x {html.escape(str(li['price']['id']))}: "
            f"{int(li['price']['unit_amount'] or 0) / 100:.2f} {html.escape(str(li['price']['currency']))}</li>"
            for li in lines
        )
        actions = ""
        if session["status"] == "open":
            actions = (
                f'<form method="post" action="/checkout/{sid}/pay"><button type="submit">Pay</button></form>'
                f'<form method="post" action="/checkout/{sid}/cancel"><button type="submit">Cancel</button></form>'
            )
        return HTMLResponse(
            f"<h1>Fake Stripe Checkout</h1><p>{sid}: {html.escape(session['status'])}</p><ul>{items}</ul>{actions}"
        )

    async def _hosted_checkout_action(self, request: Request) -> Response:
        """Pay (the session completes, its events queue for the webhook) or cancel, then back to the
        session's success or cancel URL, with {CHECKOUT_SESSION_ID} filled in as Stripe does."""
        session_id, action = request.path_params["session_id"], request.path_params["action"]
        with self._lock:
            session = self._objects.get(session_id)
            if session is None or session.get("object") != "checkout.session" or action not in ("pay", "cancel"):
                return HTMLResponse("<h1>No such checkout session</h1>", status_code=404)
            if action == "pay":
                try:
                    self.complete_checkout(session_id)
                except ValueError as exc:
                    return HTMLResponse(f"<h1>Cannot pay</h1><p>{html.escape(str(exc))}</p>", status_code=409)
            target = session["success_url"] if action == "pay" else session["cancel_url"]
        if not target:
            return HTMLResponse(f"<h1>Checkout {action} done</h1>")
        return RedirectResponse(target.replace("{CHECKOUT_SESSION_ID}", session_id), status_code=303)

    def _handle(
        self, method: str, path: str, query: str, body: str, headers: Mapping[str, str]
    ) -> tuple[int, str, dict[str, str]]:
        request_id = _new_id("req")
        out_headers = {"Request-Id": request_id, "Stripe-Version": headers.get("stripe-version", self.api_version)}
        idempotency_key = headers.get("idempotency-key") if method == "POST" else None
        if idempotency_key:
            out_headers["Idempotency-Key"] = idempotency_key
        params: JSON = {}
        with self._lock:
            try:
                api_key = self._authenticate(headers.get("authorization"))
                handler, path_args = self._route(method, path)
                params = decode_form(body if method == "POST" else query)
            except StripeApiError as exc:
                return self._finish(method, path, params, idempotency_key, exc.status, exc.body, out_headers)

            # Stripe only honours idempotency keys on POST; other verbs are naturally idempotent.
            fingerprint = (method, path, json.dumps(params, sort_keys=True))
            store_key = (api_key, idempotency_key) if idempotency_key else None
            stored = self._idempotency.get(store_key) if store_key else None
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    error = StripeApiError(
                        400,
                        (
                            "Keys for idempotent requests can only be used with the same parameters they were "
                            f"first used with. Try using a key other than '{idempotency_key}' if you meant to "
                            "execute a different request."
                            if stored.fingerprint[:2] == fingerprint[:2]
                            else "Keys for idempotent requests can only be used for the same endpoint they were "
                            f"first used for ('{stored.fingerprint[1]}' vs '{path}')."
                        ),
                        type_="idempotency_error",
                    )
                    return self._finish(method, path, params, idempotency_key, 400, error.body, out_headers)
                out_headers.update({"Idempotent-Replayed": "true", "Original-Request": stored.request_id})
                self.requests.append(RecordedRequest(method, path, params, idempotency_key, stored.status, True))
                return stored.status, stored.body, out_headers

            self._context = _RequestContext(request_id, idempotency_key)
            try:
                status, payload = 200, handler(params, **path_args)
            except StripeApiError as exc:
                status, payload = exc.status, exc.body
            except Exception as exc:  # a bug in the fake: answer like Stripe's 500 and keep the traceback
                self.errors.append(traceback.format_exc())
                status, payload = 500, StripeApiError(500, f"fake Stripe crashed: {exc!r}", type_="api_error").body
            finally:
                self._context = None
            status, text, out_headers = self._finish(
                method, path, params, idempotency_key, status, payload, out_headers
            )
            # Only successes are kept, so a request rejected by validation can be retried with its key.
            if store_key is not None and status == 200:
                self._idempotency[store_key] = _StoredResponse(fingerprint, status, text, request_id)
            return status, text, out_headers

    def _finish(
        self,
        method: str,
        path: str,
        params: JSON,
        idempotency_key: str | None,
        status: int,
        payload: JSON,
        headers: dict[str, str],
    ) -> tuple[int, str, dict[str, str]]:
        self.requests.append(RecordedRequest(method, path, params, idempotency_key, status, False))
        return status, json.dumps(payload, indent=2), headers

    @staticmethod
    def _authenticate(header: str | None) -> str:
        if not header or not header.startswith("Bearer ") or not header[len("Bearer ") :].strip():
            raise StripeApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        key = header[len("Bearer ") :].strip()
        # Test-mode keys only: a live key reaching a test server means a misconfigured test.
        if not key.startswith(("sk_test_", "rk_test_")):
            raise StripeApiError(401, f"Invalid API Key provided: {key[:8]}****")
        return key

    def _route(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        for route_method, pattern, handler in self._routes:
            match = pattern.match(path)
            if match and route_method == method:
                return handler, {k: unquote(v) for k, v in match.groupdict().items()}
        raise StripeApiError(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        )

    # ----------------------------------------------------------------- storage, rendering, events

    def _store(self, obj: JSON) -> JSON:
        self._objects[obj["id"]] = obj
        self._ids_by_type.setdefault(obj["object"], []).append(obj["id"])
        self.created[obj["object"]] += 1
        return obj

    def _get(self, kind: str, obj_id: str, label: str, *, param: str = "id", status: int = 404) -> JSON:
        obj = self._objects.get(obj_id)
        if obj is None or obj["object"] != kind:
            raise _no_such(label, obj_id, param=param, status=status)
        return obj

    def _render(self, obj: JSON) -> JSON:
        out = copy.deepcopy(obj)
        if out.get("object") == "subscription" and self.period_on_items_only:
            out.pop("current_period_start", None)
            out.pop("current_period_end", None)
        if out.get("object") == "invoice" and self.invoice_subscription_on_parent_only:
            out.pop("subscription", None)
        return out

    def _respond(self, obj: JSON, params: Mapping[str, Any]) -> JSON:
        return self._expand_all(self._render(obj), params)

    def _expand_all(self, rendered: JSON, params: Mapping[str, Any]) -> JSON:
        paths = params.get("expand") or []
        if isinstance(paths, str):
            paths = [paths]
        for path in paths:
            self._expand(rendered, path.split("."), path)
        return rendered

    def _expand(self, value: Any, path: list[str], full: str) -> Any:
        if not path:
            return value
        head, rest = path[0], path[1:]
        cannot = StripeApiError(400, f"This property cannot be expanded ({full}).", param="expand")
        if not isinstance(value, dict):
            raise cannot
        if value.get("object") == "list" and head == "data":
            value["data"] = [self._expand(item, rest, full) for item in value["data"]]
            return value
        if head == "line_items" and value.get("object") == "checkout.session":
            items = copy.deepcopy(self._checkout_line_items.get(value["id"], []))
            value["line_items"] = self._paginate(items, {}, f"/v1/checkout/sessions/{value['id']}/line_items")
        if head not in value:
            raise cannot
        child = value[head]
        if isinstance(child, str):
            if child not in self._objects:
                raise cannot
            child = self._render(self._objects[child])
        elif child is not None and not isinstance(child, dict):
            raise cannot
        value[head] = self._expand(child, rest, full) if child is not None else None
        return value

    @staticmethod
    def _paginate(items: list[JSON], params: Mapping[str, Any], url: str) -> JSON:
        limit = _int(params.get("limit", 10), "limit", minimum=1)
        if limit > 100:
            raise _invalid("limit", "This value must be less than or equal to 100.")
        ids = [item["id"] for item in items]
        after, before = params.get("starting_after"), params.get("ending_before")
        if after:
            if after not in ids:
                raise _no_such("object", after, param="starting_after", status=400)
            window = items[ids.index(after) + 1 :]
            page = window[:limit]
        elif before:
            if before not in ids:
                raise _no_such("object", before, param="ending_before", status=400)
            window = items[: ids.index(before)]
            page = window[-limit:]
        else:
            window = items
            page = window[:limit]
        return {"object": "list", "data": page, "has_more": len(window) > limit, "url": url}

    def _list(
        self,
        kind: str,
        params: JSON,
        url: str,
        filters: Iterable[str] = (),
        keep: Callable[[JSON], bool] = lambda obj: True,
    ) -> JSON:
        _check_params(params, _LIST_PARAMS | set(filters))
        # Newest first, like Stripe; insertion order breaks ties when the fake clock stands still.
        items = [
            self._render(self._objects[i]) for i in reversed(self._ids_by_type.get(kind, [])) if keep(self._objects[i])
        ]
        return self._expand_all(self._paginate(items, params, url), params)

    def _emit(self, type_: str, obj: JSON, previous_attributes: JSON | None = None) -> JSON:
        data: JSON = {"object": self._render(obj)}  # a snapshot: later changes must not leak into old events
        if previous_attributes is not None:
            data["previous_attributes"] = previous_attributes
        context = self._context
        event: JSON = {
            "id": _new_id("evt"),
            "object": "event",
            "api_version": self.api_version,
            "created": self._clock,
            "livemode": False,
            "type": type_,
            "data": data,
            "pending_webhooks": 1,
            "request": {
                "id": context.request_id if context else None,
                "idempotency_key": context.idempotency_key if context else None,
            },
        }
        self._store(event)
        self._undelivered[event["id"]] = None
        return event

    def _emit_updated(self, sub: JSON, before: JSON) -> None:
        after = self._render(sub)
        changed = {key: before.get(key) for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
        if changed:
            self._emit("customer.subscription.updated", sub, changed)

    # ----------------------------------------------------------------- customers and products

    def _create_customer(self, fields: Mapping[str, Any], customer_id: str | None = None) -> JSON:
        customer = {
            "id": customer_id or _new_id("cus"),
            "object": "customer",
            "created": self._clock,
            "livemode": False,
            "email": fields.get("email"),
            "name": fields.get("name"),
            "description": fields.get("description"),
            "phone": fields.get("phone"),
            "address": fields.get("address"),
            "metadata": dict(fields.get("metadata") or {}),
            "balance": 0,
            "currency": None,
            "delinquent": False,
            "default_source": None,
            "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None},
            "preferred_locales": fields.get("preferred_locales") or [],
            "tax_exempt": "none",
        }
        self._store(customer)
        self._emit("customer.created", customer)
        return customer

    _CUSTOMER_FIELDS = ("email", "name", "description", "phone", "address", "preferred_locales")

    def _customers_create(self, params: JSON) -> JSON:
        _check_params(params, {*self._CUSTOMER_FIELDS, "metadata", "expand"})
        fields = {key: params.get(key) for key in self._CUSTOMER_FIELDS}
        fields["metadata"] = _merge_metadata({}, params.get("metadata"))
        return self._respond(self._create_customer(fields), params)

    def _customers_retrieve(self, params: JSON, id: str) -> JSON:
        _check_params(params, {"expand"})
        return self._respond(self._get("customer", id, "customer"), params)

    def _customers_update(self, params: JSON, id: str) -> JSON:
        customer = self._get("customer", id, "customer")
        _check_params(params, {*self._CUSTOMER_FIELDS, "metadata", "expand"})
        metadata = _merge_metadata(customer["metadata"], params.get("metadata"))
        before = self._render(customer)
        for key in self._CUSTOMER_FIELDS:
            if key in params:
                customer[key] = params[key] or None
        customer["metadata"] = metadata
        after = self._render(customer)
        changed = {key: before[key] for key in before if before[key] != after[key]}
        if changed:
            self._emit("customer.updated", customer, changed)
        return self._respond(customer, params)

    def _customers_list(self, params: JSON) -> JSON:
        email = params.get("email")
        return self._list(
            "customer", params, "/v1/customers", {"email"}, lambda c: email is None or c["email"] == email
        )

    def _create_product(self, product_id: str | None, name: str, description: str | None, metadata: JSON) -> JSON:
        return self._store(
            {
                "id": product_id or _new_id("prod"),
                "object": "product",
                "active": True,
                "created": self._clock,
                "updated": self._clock,
                "livemode": False,
                "name": name,
                "description": description,
                "metadata": metadata,
                "default_price": None,
                "type": "service",
            }
        )

    def _products_create(self, params: JSON) -> JSON:
        _check_params(params, {"id", "name", "description", "metadata", "active", "expand"})
        name = _str(params, "name", required=True)
        assert name is not None
        product_id = _str(params, "id")
        if product_id is not None and product_id in self._objects:
            raise StripeApiError(400, f"Product already exists: {product_id}", code="resource_already_exists")
        product = self._create_product(
            product_id, name, _str(params, "description"), _merge_metadata({}, params.get("metadata"))
        )
        if "active" in params:
            product["active"] = _bool(params["active"], "active")
        return self._respond(product, params)

    def _products_retrieve(self, params: JSON, id: str) -> JSON:
        _check_params(params, {"expand"})
        return self._respond(self._get("product", id, "product"), params)

    def _products_list(self, params: JSON) -> JSON:
        active = _bool(params["active"], "active") if "active" in params else None
        return self._list("product", params, "/v1/products", {"active"}, lambda p: active in (None, p["active"]))

    # ----------------------------------------------------------------- prices

    def _parse_price_spec(self, params: JSON, prefix: str | None, allowed: Iterable[str]) -> JSON:
        """Validate price fields (for /v1/prices and for inline price_data) without creating anything."""

        def name(key: str) -> str:
            return f"{prefix}[{key}]" if prefix else key

        _check_params(params, allowed, prefix)
        currency = _str(params, "currency", required=True, prefix=prefix)
        assert currency is not None
        if not re.fullmatch(r"[a-zA-Z]{3}", currency):
            raise _invalid(name("currency"), f"Invalid currency: {currency}")
        if "unit_amount" not in params:
            raise _missing(name("unit_amount"))
        unit_amount = _int(params["unit_amount"], name("unit_amount"))
        product_id = _str(params, "product", prefix=prefix)
        product_data = params.get("product_data")
        if product_id is not None and product_data is not None:
            raise StripeApiError(
                400, f"You may only specify one of these parameters: {name('product')}, {name('product_data')}."
            )
        if product_id is not None:
            self._get("product", product_id, "product", param=name("product"), status=400)
        elif isinstance(product_data, dict):
            _check_params(product_data, {"name", "description", "metadata"}, name("product_data"))
            _str(product_data, "name", required=True, prefix=name("product_data"))
            _merge_metadata({}, product_data.get("metadata"), f"{name('product_data')}[metadata]")
        else:
            raise _missing(name("product"))
        recurring = params.get("recurring")
        if recurring is not None and recurring != "":
            if not isinstance(recurring, dict):
                raise _invalid(name("recurring"), f"Invalid hash: {name('recurring')}")
            _check_params(recurring, {"interval", "interval_count", "usage_type"}, name("recurring"))
            interval = recurring.get("interval")
            if interval is None:
                raise _missing(f"{name('recurring')}[interval]")
            if interval not in _INTERVALS:
                raise _invalid(
                    f"{name('recurring')}[interval]",
                    f"Invalid recurring[interval]: {interval}; must be one of day, week, month, or year",
                )
            usage_type = recurring.get("usage_type", "licensed")
            if usage_type not in ("licensed", "metered"):
                raise _invalid(f"{name('recurring')}[usage_type]", f"Invalid usage_type: {usage_type}")
            recurring = {
                "interval": interval,
                "interval_count": _int(
                    recurring.get("interval_count", 1), f"{name('recurring')}[interval_count]", minimum=1
                ),
                "usage_type": usage_type,
            }
        else:
            recurring = None
        lookup_key = _str(params, "lookup_key", prefix=prefix)
        if lookup_key is not None and any(
            self._objects[i]["lookup_key"] == lookup_key for i in self._ids_by_type.get("price", [])
        ):
            raise _invalid(name("lookup_key"), f"A price (`lookup_key`: {lookup_key}) already uses that lookup key.")
        return {
            "product_id": product_id,
            "product_data": product_data,
            "currency": currency.lower(),
            "unit_amount": unit_amount,
            "recurring": recurring,
            "nickname": _str(params, "nickname", prefix=prefix),
            "lookup_key": lookup_key,
            "metadata": _merge_metadata({}, params.get("metadata"), name("metadata")),
            "active": _bool(params["active"], name("active")) if "active" in params else True,
        }

    def _create_price_from_spec(self, spec: JSON) -> JSON:
        product_id = spec["product_id"]
        if product_id is None:
            data = spec["product_data"]
            product_id = self._create_product(
                None, data["name"], data.get("description"), _merge_metadata({}, data.get("metadata"))
            )["id"]
        price = self._create_price(
            product_id=product_id,
            currency=spec["currency"],
            unit_amount=spec["unit_amount"],
            recurring=spec["recurring"],
            nickname=spec["nickname"],
            lookup_key=spec["lookup_key"],
            metadata=spec["metadata"],
        )
        price["active"] = spec["active"]
        return price

    def _create_price(
        self,
        *,
        product_id: str,
        currency: str,
        unit_amount: int,
        recurring: JSON | None,
        nickname: str | None,
        lookup_key: str | None,
        metadata: JSON,
        price_id: str | None = None,
    ) -> JSON:
        if recurring is not None:
            recurring = {"meter": None, "trial_period_days": None, **recurring}
        return self._store(
            {
                "id": price_id or _new_id("price"),
                "object": "price",
                "active": True,
                "billing_scheme": "per_unit",
                "created": self._clock,
                "currency": currency,
                "livemode": False,
                "lookup_key": lookup_key,
                "metadata": metadata,
                "nickname": nickname,
                "product": product_id,
                "recurring": recurring,
                "tax_behavior": "unspecified",
                "type": "recurring" if recurring else "one_time",
                "unit_amount": unit_amount,
                "unit_amount_decimal": str(unit_amount),
            }
        )

    def _prices_create(self, params: JSON) -> JSON:
        spec = self._parse_price_spec(
            params,
            None,
            {
                "currency",
                "unit_amount",
                "product",
                "product_data",
                "recurring",
                "nickname",
                "lookup_key",
                "metadata",
                "active",
                "expand",
                "tax_behavior",
            },
        )
        return self._respond(self._create_price_from_spec(spec), params)

    def _prices_retrieve(self, params: JSON, id: str) -> JSON:
        _check_params(params, {"expand"})
        return self._respond(self._get("price", id, "price"), params)

    def _prices_list(self, params: JSON) -> JSON:
        active = _bool(params["active"], "active") if "active" in params else None
        product, type_, currency = params.get("product"), params.get("type"), params.get("currency")
        lookup_keys = params.get("lookup_keys")
        if isinstance(lookup_keys, str):
            lookup_keys = [lookup_keys]

        def keep(price: JSON) -> bool:
            return (
                active in (None, price["active"])
                and product in (None, price["product"])
                and type_ in (None, price["type"])
                and currency in (None, price["currency"])
                and (lookup_keys is None or price["lookup_key"] in lookup_keys)
            )

        return self._list("price", params, "/v1/prices", {"active", "product", "type", "currency", "lookup_keys"}, keep)

    def _recurring_price(self, price_id: Any, param: str) -> JSON:
        if not isinstance(price_id, str) or not price_id:
            raise _missing(param)
        price = self._get("price", price_id, "price", param=param, status=400)
        if price["recurring"] is None:
            raise _invalid(
                param,
                f"The price specified is set to `type=one_time` but this field only accepts prices with "
                f"`type=recurring`: {price_id}",
            )
        return price

    # ----------------------------------------------------------------- subscriptions

    @staticmethod
    def _amount(item: JSON) -> int:
        return int(item["price"]["unit_amount"]) * int(item["quantity"])

    @staticmethod
    def _cadence(price: JSON) -> tuple[str, int]:
        return price["recurring"]["interval"], price["recurring"]["interval_count"]

    def _new_item(self, sub_id: str, price: JSON, quantity: int, metadata: JSON, period: tuple[int, int]) -> JSON:
        return {
            "id": _new_id("si"),
            "object": "subscription_item",
            "created": self._clock,
            "current_period_start": period[0],
            "current_period_end": period[1],
            "discounts": [],
            "metadata": metadata,
            "price": copy.deepcopy(price),
            "quantity": quantity,
            "subscription": sub_id,
            "tax_rates": [],
        }

    @staticmethod
    def _set_period(sub: JSON, start: int, end: int) -> None:
        sub["current_period_start"], sub["current_period_end"] = start, end
        for item in sub["items"]["data"]:
            item["current_period_start"], item["current_period_end"] = start, end
        if sub["cancel_at_period_end"]:
            sub["cancel_at"] = end

    def _create_subscription(
        self,
        customer_id: str,
        items: list[tuple[JSON, int, JSON]],
        metadata: JSON,
        *,
        cancel_at_period_end: bool = False,
        one_time_lines: Sequence[tuple[JSON, int]] = (),
        trial_days: int | None = None,
    ) -> JSON:
        now = self._clock
        interval, count = self._cadence(items[0][0])
        period = (now, _add_interval(now, interval, count))
        if trial_days:
            # As on Stripe: the trial is the first period, and the billing cycle is anchored on
            # its end (a 14-day trial Dec 20 -> Jan 3 renews Jan 3 -> Feb 3).
            period = (now, now + 86_400 * trial_days)
        sub_id = _new_id("sub")
        sub: JSON = {
            "id": sub_id,
            "object": "subscription",
            "created": now,
            "livemode": False,
            "customer": customer_id,
            "status": "trialing" if trial_days else "active",
            "items": {
                "object": "list",
                "data": [self._new_item(sub_id, price, qty, md, period) for price, qty, md in items],
                "has_more": False,
                "total_count": len(items),
                "url": f"/v1/subscription_items?subscription={sub_id}",
            },
            "current_period_start": period[0],
            "current_period_end": period[1],
            "billing_cycle_anchor": period[1] if trial_days else now,
            "start_date": now,
            "metadata": metadata,
            "cancel_at_period_end": cancel_at_period_end,
            "cancel_at": period[1] if cancel_at_period_end else None,
            "canceled_at": now if cancel_at_period_end else None,
            "ended_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically",
            "currency": items[0][0]["currency"],
            "default_payment_method": None,
            "description": None,
            "discounts": [],
            "latest_invoice": None,
            "pause_collection": None,
            "trial_start": now if trial_days else None,
            "trial_end": period[1] if trial_days else None,
        }
        self._store(sub)
        # renew() bills anchor + (cycle + 2) intervals: after a trial, one interval past its end.
        self._billing_anchor[sub_id] = (period[1], -1) if trial_days else (now, 0)
        lines = [
            self._invoice_line(sub, item, 0 if trial_days else self._amount(item), period)
            for item in sub["items"]["data"]
        ]
        lines += [
            self._invoice_line(
                sub, {"id": None, "price": price, "quantity": qty}, price["unit_amount"] * qty, (now, now)
            )
            for price, qty in one_time_lines
        ]
        # Stripe's first invoice covers nothing in the past: its invoice-level period is a single instant.
        invoice = self._create_invoice(sub, "subscription_create", lines, period=(now, now))
        sub["latest_invoice"] = invoice["id"]
        self._emit("customer.subscription.created", sub)
        self._emit("invoice.paid", invoice)
        return sub

    def _items_param(self, value: Any) -> list[tuple[JSON, int, JSON]]:
        entries = _dicts(value, "items")
        if not entries:
            raise _missing("items")
        parsed = []
        for index, entry in enumerate(entries):
            prefix = f"items[{index}]"
            _check_params(entry, {"price", "quantity", "metadata"}, prefix)
            price = self._recurring_price(entry.get("price"), f"{prefix}[price]")
            quantity = _int(entry.get("quantity", 1), f"{prefix}[quantity]")
            parsed.append((price, quantity, _merge_metadata({}, entry.get("metadata"), f"{prefix}[metadata]")))
        self._check_item_prices([price for price, _, _ in parsed])
        return parsed

    def _check_item_prices(self, prices: list[JSON]) -> None:
        ids = [price["id"] for price in prices]
        if len(set(ids)) != len(ids):
            raise _invalid("items", "Cannot add multiple subscription items with the same price.")
        if len({self._cadence(price) for price in prices}) > 1:
            raise _invalid(
                "items",
                "All prices on a subscription must have the same `recurring.interval` and `recurring.interval_count`.",
            )
        if len({price["currency"] for price in prices}) > 1:
            raise _invalid("items", "All prices on a subscription must have the same currency.")

    _IGNORED_SUBSCRIPTION_PARAMS = frozenset(
        {"payment_behavior", "collection_method", "default_payment_method", "description", "off_session"}
    )

    def _subscriptions_create(self, params: JSON) -> JSON:
        _check_params(
            params,
            {
                "customer",
                "items",
                "metadata",
                "cancel_at_period_end",
                "proration_behavior",
                "trial_period_days",
                "expand",
                *self._IGNORED_SUBSCRIPTION_PARAMS,
            },
        )
        trial_days = _int(params["trial_period_days"], "trial_period_days") if "trial_period_days" in params else None
        if trial_days is not None and not 0 <= trial_days <= 730:
            raise _invalid("trial_period_days", "trial_period_days must be between 0 and 730")
        customer_id = _str(params, "customer", required=True)
        assert customer_id is not None
        self._get("customer", customer_id, "customer", param="customer", status=400)
        if "items" not in params:
            raise _missing("items")
        items = self._items_param(params["items"])
        metadata = _merge_metadata({}, params.get("metadata"))
        cancel = (
            _bool(params["cancel_at_period_end"], "cancel_at_period_end") if "cancel_at_period_end" in params else False
        )
        if params.get("proration_behavior") not in (None, *_PRORATION_BEHAVIORS):
            raise _invalid("proration_behavior", f"Invalid proration_behavior: {params['proration_behavior']}")
        sub = self._create_subscription(
            customer_id, items, metadata, cancel_at_period_end=cancel, trial_days=trial_days or None
        )
        return self._respond(sub, params)

    def _subscriptions_retrieve(self, params: JSON, id: str) -> JSON:
        _check_params(params, {"expand"})
        return self._respond(self._get("subscription", id, "subscription"), params)

    def _subscriptions_update(self, params: JSON, id: str) -> JSON:
        sub = self._get("subscription", id, "subscription")
        _check_params(
            params,
            {
                "items",
                "metadata",
                "cancel_at_period_end",
                "proration_behavior",
                "expand",
                "cancellation_details",
                *self._IGNORED_SUBSCRIPTION_PARAMS,
            },
        )
        if sub["status"] in ("canceled", "incomplete_expired") and set(params) - {
            "metadata",
            "expand",
            "cancellation_details",
        }:
            raise StripeApiError(400, "A canceled subscription can only update its cancellation_details and metadata.")
        proration = params.get("proration_behavior", "create_prorations")
        if proration not in _PRORATION_BEHAVIORS:
            raise _invalid("proration_behavior", f"Invalid proration_behavior: {proration}")

        # Work on copies and validate everything before touching the stored subscription.
        old_items: list[JSON] = sub["items"]["data"]
        new_items = copy.deepcopy(old_items)
        period = (sub["current_period_start"], sub["current_period_end"])
        if "items" in params:
            for index, entry in enumerate(_dicts(params["items"], "items")):
                prefix = f"items[{index}]"
                _check_params(entry, {"id", "price", "quantity", "deleted", "metadata"}, prefix)
                if "id" not in entry:
                    # As on real Stripe: an entry without an item id ADDS an item; changing the plan needs the id.
                    price = self._recurring_price(entry.get("price"), f"{prefix}[price]")
                    quantity = _int(entry.get("quantity", 1), f"{prefix}[quantity]")
                    metadata = _merge_metadata({}, entry.get("metadata"), f"{prefix}[metadata]")
                    new_items.append(self._new_item(sub["id"], price, quantity, metadata, period))
                    continue
                item = next((it for it in new_items if it["id"] == entry["id"]), None)
                if item is None:
                    raise _no_such("subscription item", str(entry["id"]), param=f"{prefix}[id]", status=400)
                if "deleted" in entry and _bool(entry["deleted"], f"{prefix}[deleted]"):
                    new_items.remove(item)
                    continue
                if "price" in entry:
                    item["price"] = copy.deepcopy(self._recurring_price(entry["price"], f"{prefix}[price]"))
                if "quantity" in entry:
                    item["quantity"] = _int(entry["quantity"], f"{prefix}[quantity]")
                if "metadata" in entry:
                    item["metadata"] = _merge_metadata(item["metadata"], entry["metadata"], f"{prefix}[metadata]")
            if not new_items:
                raise _invalid("items", "A subscription must have at least one active plan.")
            self._check_item_prices([item["price"] for item in new_items])
        metadata = _merge_metadata(sub["metadata"], params.get("metadata"))
        cancel = (
            _bool(params["cancel_at_period_end"], "cancel_at_period_end")
            if params.get("cancel_at_period_end") not in (None, "")
            else None
        )

        before = self._render(sub)
        now = self._clock
        invoice = None
        cadence_changed = self._cadence(new_items[0]["price"]) != self._cadence(old_items[0]["price"])
        if cadence_changed:
            # Stripe resets the billing cycle and bills the new plan at once when the interval changes.
            interval, count = self._cadence(new_items[0]["price"])
            end = _add_interval(now, interval, count)
            sub["items"]["data"] = new_items
            self._set_period(sub, now, end)
            self._billing_anchor[sub["id"]] = (now, 0)
            sub["billing_cycle_anchor"] = now
            lines = [self._invoice_line(sub, item, self._amount(item), (now, end)) for item in new_items]
            invoice = self._create_invoice(sub, "subscription_update", lines, period=period)
        elif "items" in params and proration == "always_invoice":
            lines = self._proration_lines(sub, old_items, new_items, now)
            if lines:
                invoice = self._create_invoice(sub, "subscription_update", lines, period=(now, now))
        # "create_prorations" leaves pending proration items on real Stripe; the fake does not model them.
        sub["items"]["data"] = new_items
        sub["items"]["total_count"] = len(new_items)
        sub["metadata"] = metadata
        if cancel is not None:
            sub["cancel_at_period_end"] = cancel
            sub["cancel_at"] = sub["current_period_end"] if cancel else None
            # Stripe stamps canceled_at when cancellation is requested, even though the status stays active.
            sub["canceled_at"] = now if cancel else None
        details = params.get("cancellation_details")
        if isinstance(details, dict):
            _check_params(details, {"comment", "feedback"}, "cancellation_details")
            sub["cancellation_details"].update({k: details[k] or None for k in details})
        if invoice is not None:
            sub["latest_invoice"] = invoice["id"]
        self._emit_updated(sub, before)
        if invoice is not None:
            self._emit("invoice.paid", invoice)
        return self._respond(sub, params)

    def _proration_lines(self, sub: JSON, old_items: list[JSON], new_items: list[JSON], now: int) -> list[JSON]:
        """Unused time on the old items and remaining time on the new ones, pro rata to the second."""
        start, end = sub["current_period_start"], sub["current_period_end"]
        fraction = max(0, end - now) / max(1, end - start)

        def key(item: JSON) -> tuple[str, int]:
            return item["price"]["id"], item["quantity"]

        old_by_id = {item["id"]: item for item in old_items}
        new_by_id = {item["id"]: item for item in new_items}
        lines = []
        for item in old_items:
            new = new_by_id.get(item["id"])
            if new is None or key(new) != key(item):
                amount = -round(self._amount(item) * fraction)
                lines.append(self._invoice_line(sub, item, amount, (now, end), proration=True))
        for item in new_items:
            old = old_by_id.get(item["id"])
            if old is None or key(old) != key(item):
                amount = round(self._amount(item) * fraction)
                lines.append(self._invoice_line(sub, item, amount, (now, end), proration=True))
        return lines

    def _cancel(self, sub: JSON, *, ended_at: int, canceled_at: int, reason: str) -> None:
        sub.update(status="canceled", ended_at=ended_at, canceled_at=canceled_at)
        sub["cancellation_details"]["reason"] = reason
        self._emit("customer.subscription.deleted", sub)

    def _subscriptions_cancel(self, params: JSON, id: str) -> JSON:
        sub = self._get("subscription", id, "subscription")
        _check_params(params, {"invoice_now", "prorate", "cancellation_details", "expand"})
        if sub["status"] in ("canceled", "incomplete_expired"):
            raise StripeApiError(400, f"This subscription is already canceled: {id}")
        details = params.get("cancellation_details")
        if isinstance(details, dict):
            _check_params(details, {"comment", "feedback"}, "cancellation_details")
            sub["cancellation_details"].update({k: details[k] or None for k in details})
        self._cancel(sub, ended_at=self._clock, canceled_at=self._clock, reason="cancellation_requested")
        return self._respond(sub, params)

    def _subscriptions_list(self, params: JSON) -> JSON:
        customer, price = params.get("customer"), params.get("price")
        status = params.get("status")
        if status not in (None, "all", "ended", *_SUBSCRIPTION_STATUSES):
            raise _invalid("status", f"Invalid status: {status}")

        def status_ok(sub: JSON) -> bool:
            # Without a status filter Stripe hides canceled subscriptions.
            if status is None:
                return sub["status"] not in ("canceled", "incomplete_expired")
            if status == "ended":
                return sub["status"] in ("canceled", "incomplete_expired")
            return status == "all" or sub["status"] == status

        def keep(sub: JSON) -> bool:
            return (
                status_ok(sub)
                and customer in (None, sub["customer"])
                and (price is None or any(item["price"]["id"] == price for item in sub["items"]["data"]))
            )

        return self._list("subscription", params, "/v1/subscriptions", {"customer", "price", "status"}, keep)

    # ----------------------------------------------------------------- invoices

    def _invoice_line(
        self, sub: JSON, item: JSON, amount: int, period: tuple[int, int], *, proration: bool = False
    ) -> JSON:
        price = item["price"]
        product = self._objects.get(price["product"], {})
        description = f"{item['quantity']} × {product.get('name', price['product'])}"
        if proration:
            description = ("Unused time on " if amount < 0 else "Remaining time on ") + description
        return {
            "id": _new_id("il"),
            "object": "line_item",
            "amount": amount,
            "currency": price["currency"],
            "description": description,
            "livemode": False,
            "metadata": {},
            "parent": {
                "type": "subscription_item_details",
                "subscription_item_details": {
                    "subscription": sub["id"],
                    "subscription_item": item["id"],
                    "proration": proration,
                    "invoice_item": None,
                },
            },
            "period": {"start": period[0], "end": period[1]},
            "price": copy.deepcopy(price),
            "pricing": {
                "type": "price_details",
                "price_details": {"price": price["id"], "product": price["product"]},
                "unit_amount_decimal": str(price["unit_amount"]),
            },
            "proration": proration,
            "quantity": item["quantity"],
            "subscription": sub["id"],
        }

    def _create_invoice(
        self, sub: JSON, reason: str, lines: list[JSON], *, period: tuple[int, int], paid: bool = True
    ) -> JSON:
        """A settled (or, if not paid, open) invoice.

        Its own period_start/end look back one period, as Stripe's do; the lines carry the service periods.
        """
        self._invoice_seq += 1
        invoice_id = _new_id("in")
        total = sum(line["amount"] for line in lines)
        due = max(0, total)  # a net credit would go to the customer balance on real Stripe
        now = self._clock
        customer = self._objects.get(sub["customer"], {})
        return self._store(
            {
                "id": invoice_id,
                "object": "invoice",
                "created": now,
                "livemode": False,
                "customer": sub["customer"],
                "customer_email": customer.get("email"),
                "subscription": sub["id"],
                "parent": {
                    "type": "subscription_details",
                    "quote_details": None,
                    "subscription_details": {"subscription": sub["id"], "metadata": dict(sub["metadata"])},
                },
                "billing_reason": reason,
                "collection_method": "charge_automatically",
                "currency": sub["currency"],
                "status": "paid" if paid else "open",
                "amount_due": due,
                "amount_paid": due if paid else 0,
                "amount_remaining": 0 if paid else due,
                "subtotal": total,
                "total": total,
                "attempted": True,
                "attempt_count": 1,
                "number": f"FAKE-{self._invoice_seq:04d}",
                "period_start": period[0],
                "period_end": period[1],
                "lines": {
                    "object": "list",
                    "data": lines,
                    "has_more": False,
                    "total_count": len(lines),
                    "url": f"/v1/invoices/{invoice_id}/lines",
                },
                "status_transitions": {
                    "finalized_at": now,
                    "paid_at": now if paid else None,
                    "marked_uncollectible_at": None,
                    "voided_at": None,
                },
                "hosted_invoice_url": None,
                "metadata": {},
            }
        )

    def _invoices_retrieve(self, params: JSON, id: str) -> JSON:
        _check_params(params, {"expand"})
        return self._respond(self._get("invoice", id, "invoice"), params)

    def _invoice_lines_list(self, params: JSON, id: str) -> JSON:
        _check_params(params, _LIST_PARAMS)
        lines = copy.deepcopy(self._get("invoice", id, "invoice")["lines"]["data"])
        return self._expand_all(self._paginate(lines, params, f"/v1/invoices/{id}/lines"), params)

    def _invoices_list(self, params: JSON) -> JSON:
        customer, subscription, status = params.get("customer"), params.get("subscription"), params.get("status")

        def keep(invoice: JSON) -> bool:
            return (
                customer in (None, invoice["customer"])
                and subscription in (None, invoice["subscription"])
                and status in (None, invoice["status"])
            )

        return self._list("invoice", params, "/v1/invoices", {"customer", "subscription", "status"}, keep)

    # ----------------------------------------------------------------- checkout

    _IGNORED_CHECKOUT_PARAMS = frozenset(
        {
            "allow_promotion_codes",
            "automatic_tax",
            "billing_address_collection",
            "locale",
            "payment_method_types",
            "ui_mode",
        }
    )

    def _checkout_create(self, params: JSON) -> JSON:
        _check_params(
            params,
            {
                "mode",
                "customer",
                "customer_email",
                "customer_creation",
                "line_items",
                "success_url",
                "cancel_url",
                "client_reference_id",
                "metadata",
                "subscription_data",
                "payment_intent_data",
                "expires_at",
                "expand",
                *self._IGNORED_CHECKOUT_PARAMS,
            },
        )
        mode = _str(params, "mode", required=True)
        if mode not in ("payment", "subscription"):
            raise _invalid("mode", f"Invalid mode: {mode} (the fake supports payment and subscription)")
        customer_id = _str(params, "customer")
        customer_email = _str(params, "customer_email")
        if customer_id is not None and customer_email is not None:
            raise StripeApiError(400, "You may only specify one of these parameters: customer, customer_email.")
        if customer_id is not None:
            self._get("customer", customer_id, "customer", param="customer", status=400)
        customer_creation = params.get("customer_creation", "if_required")
        if customer_creation not in ("always", "if_required"):
            raise _invalid("customer_creation", f"Invalid customer_creation: {customer_creation}")
        if mode == "subscription" and "customer_creation" in params:
            raise _invalid("customer_creation", "`customer_creation` can only be used in `payment` mode.")
        subscription_data = params.get("subscription_data") or {}
        if not isinstance(subscription_data, dict):
            raise _invalid("subscription_data", "Invalid hash: subscription_data")
        _check_params(subscription_data, {"metadata", "description"}, "subscription_data")
        if subscription_data and mode != "subscription":
            raise _invalid("subscription_data", "You can only pass `subscription_data` in `subscription` mode.")
        payment_intent_data = params.get("payment_intent_data") or {}
        if not isinstance(payment_intent_data, dict):
            raise _invalid("payment_intent_data", "Invalid hash: payment_intent_data")
        _check_params(payment_intent_data, {"metadata", "description"}, "payment_intent_data")
        if payment_intent_data and mode != "payment":
            raise _invalid("payment_intent_data", "You can only pass `payment_intent_data` in `payment` mode.")
        if "line_items" not in params:
            raise _missing("line_items")
        entries = _dicts(params["line_items"], "line_items")
        if not entries:
            raise _missing("line_items")

        # Validate every line before creating any inline price, so a rejected request leaves no trace.
        resolved: list[tuple[JSON, int]] = []
        for index, entry in enumerate(entries):
            prefix = f"line_items[{index}]"
            _check_params(entry, {"price", "price_data", "quantity", "adjustable_quantity"}, prefix)
            if "quantity" not in entry:
                raise _missing(f"{prefix}[quantity]")
            quantity = _int(entry["quantity"], f"{prefix}[quantity]", minimum=1)
            if "price" in entry and "price_data" in entry:
                raise StripeApiError(
                    400, f"You may only specify one of these parameters: {prefix}[price], {prefix}[price_data]."
                )
            if "price" in entry:
                price = self._get("price", str(entry["price"]), "price", param=f"{prefix}[price]", status=400)
                if not price["active"]:
                    raise _invalid(f"{prefix}[price]", f"The price `{price['id']}` is not active.")
                resolved.append((price, quantity))
            elif isinstance(entry.get("price_data"), dict):
                spec = self._parse_price_spec(
                    entry["price_data"],
                    f"{prefix}[price_data]",
                    {"currency", "unit_amount", "product", "product_data", "recurring", "tax_behavior"},
                )
                resolved.append(({"spec": spec, "recurring": spec["recurring"]}, quantity))
            else:
                raise _missing(f"{prefix}[price]")
        recurring = [price for price, _ in resolved if price["recurring"]]
        if mode == "payment" and recurring:
            raise _invalid(
                "line_items",
                "You specified `payment` mode but passed a recurring price. Either switch "
                "to `subscription` mode or use only one-time prices.",
            )
        if mode == "subscription" and not recurring:
            raise _invalid(
                "line_items", "You must provide at least one recurring price in `subscription` mode when using prices."
            )
        if mode == "subscription":
            cadences = {(p["recurring"]["interval"], p["recurring"]["interval_count"]) for p in recurring}
            if len(cadences) > 1:
                raise _invalid("line_items", "All recurring prices must have the same billing interval.")
        subscription_metadata = _merge_metadata({}, subscription_data.get("metadata"), "subscription_data[metadata]")
        metadata = _merge_metadata({}, params.get("metadata"))
        expires_at = _int(params["expires_at"], "expires_at") if "expires_at" in params else self._clock + 86_400

        line_items = []
        for resolved_price, quantity in resolved:
            price = resolved_price
            if "spec" in resolved_price:
                price = self._create_price_from_spec(resolved_price["spec"])
                price["active"] = False  # an inline price_data price belongs to this session only
            product = self._objects.get(price["product"], {})
            amount = price["unit_amount"] * quantity
            line_items.append(
                {
                    "id": _new_id("li"),
                    "object": "item",
                    "amount_discount": 0,
                    "amount_subtotal": amount,
                    "amount_tax": 0,
                    "amount_total": amount,
                    "currency": price["currency"],
                    "description": product.get("name"),
                    "price": copy.deepcopy(price),
                    "quantity": quantity,
                }
            )
        total = sum(li["amount_total"] for li in line_items)
        session_id = _new_id("cs_test")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "created": self._clock,
            "livemode": False,
            "mode": mode,
            "status": "open",
            "payment_status": "unpaid",
            "url": f"{self.url}/checkout/{session_id}",
            "success_url": _str(params, "success_url"),
            "cancel_url": _str(params, "cancel_url"),
            "client_reference_id": _str(params, "client_reference_id"),
            "customer": customer_id,
            "customer_email": customer_email,
            "customer_creation": customer_creation if mode == "payment" else None,
            "customer_details": None,
            "metadata": metadata,
            "amount_subtotal": total,
            "amount_total": total,
            "currency": line_items[0]["currency"],
            "expires_at": expires_at,
            "subscription": None,
            "invoice": None,
            "payment_intent": None,
            "ui_mode": "hosted",
        }
        self._store(session)
        self._checkout_line_items[session_id] = line_items
        self._checkout_extra[session_id] = {
            "subscription_metadata": subscription_metadata,
            "customer_creation": customer_creation,
        }
        return self._respond(session, params)

    def _checkout_retrieve(self, params: JSON, id: str) -> JSON:
        _check_params(params, {"expand"})
        return self._respond(self._get("checkout.session", id, "checkout.session"), params)

    def _checkout_line_items_list(self, params: JSON, id: str) -> JSON:
        self._get("checkout.session", id, "checkout.session")
        _check_params(params, _LIST_PARAMS)
        items = copy.deepcopy(self._checkout_line_items[id])
        return self._expand_all(self._paginate(items, params, f"/v1/checkout/sessions/{id}/line_items"), params)

    def _expire_checkout(self, session: JSON) -> JSON:
        if session["status"] != "open":
            raise StripeApiError(
                400,
                f'Only Checkout Sessions with a status in ["open"] can be expired; {session["id"]} is '
                f"{session['status']}.",
            )
        session.update(status="expired", url=None)
        self._emit("checkout.session.expired", session)
        return session

    def _checkout_expire(self, params: JSON, id: str) -> JSON:
        _check_params(params, {"expand"})
        session = self._expire_checkout(self._get("checkout.session", id, "checkout.session"))
        return self._respond(session, params)

    def _checkout_list(self, params: JSON) -> JSON:
        status, customer, subscription = params.get("status"), params.get("customer"), params.get("subscription")

        def keep(session: JSON) -> bool:
            return (
                status in (None, session["status"])
                and customer in (None, session["customer"])
                and subscription in (None, session["subscription"])
            )

        return self._list(
            "checkout.session", params, "/v1/checkout/sessions", {"status", "customer", "subscription"}, keep
        )

    # ----------------------------------------------------------------- events

    def _events_retrieve(self, params: JSON, id: str) -> JSON:
        _check_params(params, {"expand"})
        return self._respond(self._get("event", id, "event"), params)

    def _events_list(self, params: JSON) -> JSON:
        type_ = params.get("type")
        types = params.get("types")
        if isinstance(types, str):
            types = [types]

        def keep(event: JSON) -> bool:
            if type_ is not None and not fnmatch.fnmatch(event["type"], type_):
                return False
            return types is None or event["type"] in types

        return self._list("event", params, "/v1/events", {"type", "types"}, keep)
