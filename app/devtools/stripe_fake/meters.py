"""Billing Meters in the local Stripe stand-in: meters, meter events (identifier unique, as
Stripe enforces within its rolling window) and event summaries. The HTTP layer (http.py)
enforces idempotency keys on these POSTs as on every other."""

from __future__ import annotations

from app.devtools.stripe_fake.params import JSON, StripeApiError, _check_params, _invalid, _missing
from app.devtools.stripe_fake.store import StripeState, _new_id


class MetersMixin(StripeState):
    """/v1/billing/meters and /v1/billing/meter_events."""

    def _meters_create(self, params: JSON) -> JSON:
        allowed = {"display_name", "event_name", "default_aggregation", "customer_mapping", "value_settings"}
        _check_params(params, {*allowed, "expand"})
        for field in ("display_name", "event_name"):
            if not params.get(field):
                raise _missing(field)
        if any(m["event_name"] == params["event_name"] for m in self._all_of("billing.meter")):
            raise _invalid("event_name", "A meter with this event_name already exists.")
        meter = {
            "id": _new_id("mtr"),
            "object": "billing.meter",
            "created": self.clock,
            "display_name": params["display_name"],
            "event_name": params["event_name"],
            "default_aggregation": params.get("default_aggregation") or {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
            "value_settings": {"event_payload_key": "value"},
            "status": "active",
            "livemode": False,
        }
        self._store(meter)
        return self._respond(meter, params)

    def _meters_retrieve(self, params: JSON, id: str) -> JSON:
        _check_params(params, {"expand"})
        return self._respond(self._get("billing.meter", id, "billing.meter"), params)

    def _meter_events_create(self, params: JSON) -> JSON:
        _check_params(params, {"event_name", "payload", "identifier", "timestamp"})
        name = params.get("event_name")
        if not name:
            raise _missing("event_name")
        if not any(m["event_name"] == name and m["status"] == "active" for m in self._all_of("billing.meter")):
            raise _invalid("event_name", f"No active meter was found for event_name '{name}'.")
        payload = params.get("payload") or {}
        customer = payload.get("stripe_customer_id")
        if not customer:
            raise _missing("payload[stripe_customer_id]")
        self._get("customer", customer, "customer", param="payload[stripe_customer_id]", status=400)
        value = payload.get("value")
        if not isinstance(value, str) or not value.isdigit():
            raise _invalid("payload[value]", "payload[value] must be a whole number.")
        identifier = params.get("identifier") or _new_id("mev")
        if any(e["identifier"] == identifier for e in self.meter_events):
            raise StripeApiError(
                400,
                f"An event already exists with identifier {identifier}.",
                code="resource_already_exists",
                param="identifier",
            )
        event = {
            "object": "billing.meter_event",
            "created": self.clock,
            "event_name": name,
            "identifier": identifier,
            "livemode": False,
            "payload": {"stripe_customer_id": customer, "value": value},
            "timestamp": int(params.get("timestamp") or self.clock),
        }
        self.meter_events.append(event)
        return dict(event)

    def _meter_event_summaries(self, params: JSON, id: str) -> JSON:
        _check_params(params, {"customer", "start_time", "end_time", "limit", "starting_after", "ending_before"})
        meter = self._get("billing.meter", id, "billing.meter")
        for field in ("customer", "start_time", "end_time"):
            if field not in params:
                raise _missing(field)
        start, end = int(params["start_time"]), int(params["end_time"])
        total = sum(
            int(e["payload"]["value"])
            for e in self.meter_events
            if e["event_name"] == meter["event_name"]
            and e["payload"]["stripe_customer_id"] == params["customer"]
            and start <= e["timestamp"] < end
        )
        summary = {
            "id": f"mtrusg_{id}_{start}",
            "object": "billing.meter_event_summary",
            "aggregated_value": total,
            "end_time": end,
            "livemode": False,
            "meter": id,
            "start_time": start,
        }
        return {
            "object": "list",
            "data": [summary],
            "has_more": False,
            "url": f"/v1/billing/meters/{id}/event_summaries",
        }

    def _all_of(self, kind: str) -> list[JSON]:
        return [self._objects[i] for i in self._ids_by_type.get(kind, [])]
