"""Customers in the local Stripe stand-in: /v1/customers and the `add_customer` seeding control."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.devtools.stripe_fake.params import JSON, _check_params, _merge_metadata
from app.devtools.stripe_fake.store import StripeState, _new_id


class CustomersMixin(StripeState):
    """/v1/customers, and customers a test creates directly."""

    # ----------------------------------------------------------------- seeding

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

    # ----------------------------------------------------------------- the API

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
