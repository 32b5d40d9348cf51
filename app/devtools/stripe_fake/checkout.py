"""Checkout Sessions in the local Stripe stand-in: /v1/checkout/sessions, the hosted page that
stands in for checkout.stripe.com, and the `complete_checkout`/`expire_checkout` controls.
Completing a session creates what Stripe would: the customer and, in subscription mode, the
subscription with its first invoice."""

from __future__ import annotations

import copy
import html

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from app.devtools.stripe_fake.customers import CustomersMixin
from app.devtools.stripe_fake.params import (
    JSON,
    StripeApiError,
    _check_params,
    _dicts,
    _int,
    _invalid,
    _merge_metadata,
    _missing,
    _str,
)
from app.devtools.stripe_fake.prices import PricesMixin
from app.devtools.stripe_fake.store import _LIST_PARAMS, _new_id
from app.devtools.stripe_fake.subscriptions import SubscriptionsMixin


class CheckoutMixin(SubscriptionsMixin, CustomersMixin, PricesMixin):
    """/v1/checkout/sessions and the hosted page; paying creates customers and subscriptions."""

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

    # ----------------------------------------------------------------- the hosted page

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
                self._changed()
            target = session["success_url"] if action == "pay" else session["cancel_url"]
        if not target:
            return HTMLResponse(f"<h1>Checkout {action} done</h1>")
        return RedirectResponse(target.replace("{CHECKOUT_SESSION_ID}", session_id), status_code=303)

    # ----------------------------------------------------------------- the API

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
