"""Subscriptions in the local Stripe stand-in: /v1/subscriptions (create, update with plan
changes and prorations, cancel, list) and the controls for what happens on Stripe's side over
time (`renew`, `set_status`). Each billing step writes its invoice through InvoicesMixin."""

from __future__ import annotations

import calendar
import copy
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from app.devtools.stripe_fake.invoices import InvoicesMixin
from app.devtools.stripe_fake.params import (
    JSON,
    StripeApiError,
    _bool,
    _check_params,
    _dicts,
    _int,
    _invalid,
    _merge_metadata,
    _missing,
    _no_such,
    _str,
)
from app.devtools.stripe_fake.store import _new_id

_SUBSCRIPTION_STATUSES = frozenset(
    {"incomplete", "incomplete_expired", "trialing", "active", "past_due", "canceled", "unpaid", "paused"}
)
_PRORATION_BEHAVIORS = frozenset({"create_prorations", "none", "always_invoice"})


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


class SubscriptionsMixin(InvoicesMixin):
    """/v1/subscriptions, and the passing of billing periods a test drives by hand."""

    # ----------------------------------------------------------------- things that happen on Stripe's side

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

    # ----------------------------------------------------------------- the API and its billing steps

    def _emit_updated(self, sub: JSON, before: JSON) -> None:
        after = self._render(sub)
        changed = {key: before.get(key) for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
        if changed:
            self._emit("customer.subscription.updated", sub, changed)

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
