"""The one place that talks to Stripe: a thin wrapper over the real `stripe.StripeClient`.

Every method returns plain dicts (StripeObject.to_dict()), so handlers and tests never
depend on the library's object model. Every write carries an idempotency key the CALLER
derives from our own operation ids: the library's automatic keys are random per process
and do not survive a crash of ours."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import stripe

from app.core.errors import DomainError
from app.settings import Settings

JSON = dict[str, Any]


class StripeNotConfigured(DomainError):
    code = "STRIPE_NOT_CONFIGURED"


class StripeUnavailable(DomainError):
    """Stripe refused or could not be reached; nothing of ours was changed."""

    code = "STRIPE_ERROR"


def is_missing(exc: stripe.StripeError) -> bool:
    return isinstance(exc, stripe.InvalidRequestError) and getattr(exc, "code", None) == "resource_missing"


def _client(settings: Settings, api_key: str, stripe_account: str | None) -> stripe.StripeClient:
    base: Any = {}
    if settings.stripe_api_base:
        url = settings.stripe_api_base.rstrip("/")
        base = {"api": url, "connect": url, "files": url, "meter_events": url}
    # Retries are safe: every write we make carries an explicit idempotency key.
    return stripe.StripeClient(api_key, stripe_account=stripe_account, base_addresses=base, max_network_retries=2)


class StripeGateway:
    def __init__(self, client: stripe.StripeClient) -> None:
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> StripeGateway:
        """The platform's own account."""
        if not settings.stripe_api_key:
            raise StripeNotConfigured("Stripe is not configured: set METERKIT_STRIPE_API_KEY")
        return cls(_client(settings, settings.stripe_api_key, None))

    @classmethod
    def for_connected_account(cls, settings: Settings, account_id: str) -> StripeGateway:
        """A Connect account: the platform's key acting with `Stripe-Account: acct_...`."""
        if not settings.stripe_api_key:
            raise StripeNotConfigured("Stripe is not configured: set METERKIT_STRIPE_API_KEY")
        return cls(_client(settings, settings.stripe_api_key, account_id))

    @classmethod
    def for_restricted_key(cls, settings: Settings, api_key: str) -> StripeGateway:
        """An organization's own account through its restricted key (decrypted by the caller)."""
        return cls(_client(settings, api_key, None))

    # ---------------------------------------------------------------- writes (caller-supplied keys)

    def create_customer(self, *, name: str, tenant_id: str, idempotency_key: str) -> JSON:
        # The metadata is for humans in the Stripe dashboard; we never read it back.
        obj = self.client.v1.customers.create(
            {"name": name, "metadata": {"meterkit_tenant_id": tenant_id}},
            {"idempotency_key": idempotency_key},
        )
        return obj.to_dict()

    def create_checkout_session(
        self,
        *,
        mode: str,
        price_id: str | None,
        customer: str,
        success_url: str,
        cancel_url: str,
        client_reference_id: str,
        idempotency_key: str,
        price_data: JSON | None = None,
    ) -> JSON:
        """`price_data` (an inline price: currency, unit_amount, product_data) instead of a price id."""
        line: JSON = (
            {"price": price_id, "quantity": 1} if price_data is None else {"price_data": price_data, "quantity": 1}
        )
        params: Any = {
            "mode": mode,
            "customer": customer,
            "line_items": [line],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": client_reference_id,
        }
        return self.client.v1.checkout.sessions.create(params, {"idempotency_key": idempotency_key}).to_dict()

    def change_subscription_price(
        self, *, subscription_id: str, item_id: str, price_id: str, idempotency_key: str
    ) -> JSON:
        params: Any = {"items": [{"id": item_id, "price": price_id}], "proration_behavior": "create_prorations"}
        return self.client.v1.subscriptions.update(
            subscription_id, params, {"idempotency_key": idempotency_key}
        ).to_dict()

    # ---------------------------------------------------------------- reads

    def retrieve_account(self) -> JSON:
        """GET /v1/account: the account this gateway acts on (a connection's validating read)."""
        return self.client.v1.accounts.retrieve_current().to_dict()

    def retrieve_subscription(self, subscription_id: str) -> JSON:
        return self.client.v1.subscriptions.retrieve(subscription_id).to_dict()

    def retrieve_checkout_session(self, session_id: str) -> JSON:
        return self.client.v1.checkout.sessions.retrieve(session_id).to_dict()

    def checkout_line_items(self, session_id: str) -> list[JSON]:
        page = self.client.v1.checkout.sessions.line_items.list(session_id, {"limit": 100})
        return [item.to_dict() for item in page.auto_paging_iter()]

    def invoice_lines(self, invoice_id: str) -> list[JSON]:
        page = self.client.v1.invoices.line_items.list(invoice_id, {"limit": 100})
        return [item.to_dict() for item in page.auto_paging_iter()]

    def all_subscriptions(self) -> Iterator[JSON]:
        # status=all: without it Stripe hides canceled subscriptions, which reconcile must see.
        page = self.client.v1.subscriptions.list({"status": "all", "limit": 100})
        for sub in page.auto_paging_iter():
            yield sub.to_dict()

    def completed_checkout_sessions(self) -> Iterator[JSON]:
        page = self.client.v1.checkout.sessions.list({"status": "complete", "limit": 100})
        for cs in page.auto_paging_iter():
            yield cs.to_dict()

    def expired_checkout_sessions(self) -> Iterator[JSON]:
        page = self.client.v1.checkout.sessions.list({"status": "expired", "limit": 100})
        for cs in page.auto_paging_iter():
            yield cs.to_dict()

    def paid_invoices(self) -> Iterator[JSON]:
        page = self.client.v1.invoices.list({"status": "paid", "limit": 100})
        for inv in page.auto_paging_iter():
            yield inv.to_dict()
