"""Invoices in the local Stripe stand-in: the invoices subscriptions bill (creation, renewal,
plan changes, prorations) and /v1/invoices to read them back."""

from __future__ import annotations

import copy

from app.devtools.stripe_fake.params import JSON, _check_params
from app.devtools.stripe_fake.store import _LIST_PARAMS, StripeState, _new_id


class InvoicesMixin(StripeState):
    """Invoice objects and their lines, written by SubscriptionsMixin; /v1/invoices reads them."""

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
