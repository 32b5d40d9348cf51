"""FakeStripe: the resource mixins composed on one state object, served over HTTP on loopback."""

from __future__ import annotations

import re
import threading
from types import TracebackType

import httpx
import requests
import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.devtools.serving import BackgroundServer
from app.devtools.stripe_fake.checkout import CheckoutMixin
from app.devtools.stripe_fake.events import EventsMixin
from app.devtools.stripe_fake.http import Handler, HttpMixin
from app.devtools.stripe_fake.meters import MetersMixin
from app.devtools.stripe_fake.store import _new_id


class FakeStripe(CheckoutMixin, MetersMixin, EventsMixin, HttpMixin):
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
        self._http = None  # for webhook deliveries; building one costs ~10 ms
        self._routes = self._build_routes()
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
        # Clients from before the reset still work (requests reconnects); this just drops idle connections.
        for session in self._sessions:
            session.close()
        self._sessions.clear()
        with self._lock:
            self._reset_state(*self._initial)

    def start(self) -> FakeStripe:
        self._server.start()
        return self

    # ----------------------------------------------------------------- several accounts

    def add_account(
        self,
        account_id: str | None = None,
        *,
        connected: bool = False,
        restricted_key: str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> FakeStripe:
        """Another Stripe account this server speaks for, with objects, events and meters of its own.

        connected=True: a Connect account of this (the platform's) account: requests with the
        platform's key and `Stripe-Account: <id>` act on it, and its events (naming `account`) go to
        `connect_webhook_url` signed with `connect_webhook_secret`. A `restricted_key` (rk_test_...)
        acts on it too; its events then go to `webhook_url` signed with `webhook_secret` (the
        organization's own endpoint). `metadata` is the account's (for a Connect account: what the
        platform set on it at onboarding). Returns the account's fake: add its prices and drive its
        customers there, as on the platform's."""
        with self._lock:
            ident = account_id or _new_id("acct")
            if ident in self._accounts or ident == self.account_id:
                raise ValueError(f"account {ident} exists already")
            child = FakeStripe(
                webhook_url=webhook_url,
                webhook_secret=webhook_secret or f"whsec_{_new_id('acct')[5:]}",
                api_version=self.api_version,
            )
            child._lock = self._lock  # one lock: requests for any account are serialised as before
            child._parent = self
            child.account_id = ident
            child.connected = connected
            child.account_metadata = dict(metadata or {})
            child.on_change = self.on_change
            self._accounts[ident] = child
            if restricted_key is not None:
                self.add_restricted_key(ident, restricted_key)
            return child

    def account(self, account_id: str) -> FakeStripe:
        return self._accounts[account_id]  # type: ignore[no-any-return]

    def add_restricted_key(self, account_id: str, key: str) -> None:
        if not key.startswith("rk_test_"):
            raise ValueError("the fake takes test-mode restricted keys (rk_test_...)")
        with self._lock:
            self._restricted_keys[key] = account_id

    def revoke_restricted_key(self, key: str) -> None:
        """As rolling a key in the dashboard: the old one answers 401 from now on."""
        with self._lock:
            self._restricted_keys.pop(key, None)

    def deliver_all_pending(self) -> list[httpx.Response]:
        """deliver_pending() on this account, then on every other account, in the order they were added."""
        responses = self.deliver_pending()
        for child in list(self._accounts.values()):
            responses.extend(child.deliver_pending())
        return responses

    def _account_current(self, params: dict[str, object]) -> dict[str, object]:
        """GET /v1/account: the account the request acts on (a connection's validating read)."""
        return {
            "id": self.account_id,
            "object": "account",
            "type": "standard",
            "country": "US",
            "default_currency": "usd",
            "charges_enabled": True,
            "details_submitted": True,
            "metadata": dict(self.account_metadata),
        }

    async def _hosted_checkout_page(self, request: Request) -> Response:
        return await super(FakeStripe, self._session_owner(request))._hosted_checkout_page(request)

    async def _hosted_checkout_action(self, request: Request) -> Response:
        return await super(FakeStripe, self._session_owner(request))._hosted_checkout_action(request)

    def _session_owner(self, request: Request) -> FakeStripe:
        """The account a hosted Checkout page's session was made on (this server serves them all)."""
        session_id = request.path_params["session_id"]
        with self._lock:
            for child in self._accounts.values():
                if session_id in child._objects:
                    return child  # type: ignore[no-any-return]
        return self

    def stop(self) -> None:
        for child in list(getattr(self, "_accounts", {}).values()):
            if child._http is not None:
                child._http.close()
                child._http = None
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

    def client(
        self,
        *,
        api_key: str = "sk_test_fake",
        stripe_version: str | None = None,
        max_network_retries: int = 0,
    ) -> stripe.StripeClient:
        """A real StripeClient whose every base address points at this fake. On an account added with
        add_account: the platform's key with `Stripe-Account` (Connect), else the account's restricted key."""
        stripe_account = None
        if self._parent is not None:
            if self.connected:
                stripe_account = self.account_id
            else:
                keys = [k for k, a in self._parent._restricted_keys.items() if a == self.account_id]
                if not keys:
                    raise RuntimeError(f"account {self.account_id} has no restricted key to act with")
                api_key = keys[0]
        session = requests.Session()
        # The fake is on loopback; an HTTP(S)_PROXY from the environment must not intercept it.
        session.trust_env = False
        self._sessions.append(session)
        url = self.url
        return stripe.StripeClient(
            api_key,
            stripe_account=stripe_account,
            base_addresses={"api": url, "connect": url, "files": url, "meter_events": url},
            stripe_version=stripe_version,
            max_network_retries=max_network_retries,
            http_client=stripe.RequestsClient(session=session, timeout=10),
        )

    # ----------------------------------------------------------------- routes

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
            ("GET", "/v1/account", self._account_current),
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
