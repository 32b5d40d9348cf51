"""Events in the local Stripe stand-in: /v1/events, and their delivery to the webhook URL signed
as Stripe signs (`deliver`, `deliver_pending`, `sign`). Events are emitted by StripeState._emit."""

from __future__ import annotations

import fnmatch
import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx
import stripe

from app.devtools.stripe_fake.params import JSON, _check_params
from app.devtools.stripe_fake.store import Delivery, StripeState


class EventsMixin(StripeState):
    """/v1/events, and webhook delivery and signing."""

    _http: httpx.Client | None  # built on first delivery, closed by FakeStripe.stop()

    # ----------------------------------------------------------------- webhooks

    def sign(self, payload: str | bytes, timestamp: int | None = None, secret: str | None = None) -> str:
        """A Stripe-Signature header for payload; tests pass odd timestamps or secrets to make bad ones."""
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        # Real wall-clock time by default: receivers check tolerance against time.time(), not fake.clock.
        stamp = int(time.time()) if timestamp is None else timestamp
        return stripe.WebhookSignature.generate_signature_header(
            text, secret if secret is not None else self._delivery_target()[1], timestamp=stamp
        )

    def _delivery_target(self) -> tuple[str | None, str]:
        """Where this account's events go: a connected account's to the platform's Connect endpoint,
        signed with its secret; every other account's to its own endpoint."""
        if self.connected and self._parent is not None:
            return self._parent.connect_webhook_url, self._parent.connect_webhook_secret
        return self.webhook_url, self.webhook_secret

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
        target, _ = self._delivery_target()
        if target is None:
            raise RuntimeError("set fake.webhook_url (or, for a connected account, fake.connect_webhook_url) first")
        url = target
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
            delivered = event_id is not None and any(r.is_success for r in responses)
            if delivered and self._undelivered.pop(str(event_id), False) is None:
                self._changed()  # it was pending: the state file must forget it too
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
