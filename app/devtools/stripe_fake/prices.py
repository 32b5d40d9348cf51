"""Products and prices in the local Stripe stand-in: /v1/products, /v1/prices, the inline
`price_data` specs Checkout accepts, and the `add_price` seeding control."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from app.devtools.stripe_fake.params import (
    JSON,
    StripeApiError,
    _bool,
    _check_params,
    _int,
    _invalid,
    _merge_metadata,
    _missing,
    _str,
)
from app.devtools.stripe_fake.store import StripeState, _new_id

_INTERVALS = ("day", "week", "month", "year")


class PricesMixin(StripeState):
    """/v1/products and /v1/prices, and prices a test creates with the ids it chooses."""

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

    # ----------------------------------------------------------------- products

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
