"""The one state object every resource mixin shares: the object store, the clock, rendering and
expansion, list pagination and event emission, and the records tests read (requests, deliveries)."""

from __future__ import annotations

import copy
import fnmatch
import json
import secrets
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import stripe

from app.devtools.serving import BackgroundServer
from app.devtools.stripe_fake.params import JSON, StripeApiError, _check_params, _int, _invalid, _no_such

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


_LIST_PARAMS = frozenset({"limit", "starting_after", "ending_before", "expand"})


# --------------------------------------------------------------------------- the state


STATE_VERSION = 1


class StripeState:
    """The fake's state and the helpers every resource uses; FakeStripe sets `_lock` and `_server`."""

    _lock: threading.RLock
    _server: BackgroundServer
    # Called under the lock after every change (an API write, a payment, a delivery): what
    # `meterkit dev stripe --state` uses to keep its state in a file across restarts.
    on_change: Callable[[], None] | None = None

    def _reset_state(
        self, webhook_url: str | None, webhook_secret: str, clock: int | None, api_version: str | None
    ) -> None:
        """Everything FakeStripe.reset() forgets: objects, events, records and settings."""
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
        # Other accounts this fake speaks for (FakeStripe.add_account), and restricted key -> account.
        self._accounts: dict[str, Any] = {}
        self._restricted_keys: dict[str, str] = {}
        # The platform's Connect endpoint: connected accounts' events go there, signed with its secret.
        self.connect_webhook_url: str | None = None
        self.connect_webhook_secret: str = "whsec_fake_connect_secret"

    # Set on an account the platform's fake speaks for (FakeStripe.add_account): its parent serves it.
    _parent: Any = None
    # On a Connect account: its events name it (`account`) and go to the parent's Connect endpoint.
    account_id: str = "acct_fakeplatform00000001"
    connected: bool = False
    account_metadata: dict[str, str] = {}  # replaced per account by add_account, never mutated

    @property
    def url(self) -> str:
        return self._parent.url if self._parent is not None else self._server.url

    # ----------------------------------------------------------------- persistence (meterkit dev stripe --state)

    def dump_state(self) -> str:
        """Everything a restart must keep, as JSON text: objects, events not yet delivered,
        idempotency keys, the clock. Not the records tests read (requests, deliveries, errors).
        Encoded under the lock: the API thread must not change it mid-encoding."""
        with self._lock:
            state = {
                "version": STATE_VERSION,
                "clock": self._clock,
                "objects": self._objects,
                "ids_by_type": self._ids_by_type,
                "checkout_line_items": self._checkout_line_items,
                "checkout_extra": self._checkout_extra,
                "billing_anchor": {k: list(v) for k, v in self._billing_anchor.items()},
                "idempotency": [
                    [api_key, key, list(r.fingerprint), r.status, r.body, r.request_id]
                    for (api_key, key), r in self._idempotency.items()
                ],
                "undelivered": list(self._undelivered),
                "invoice_seq": self._invoice_seq,
                "created": dict(self.created),
                "meter_events": self.meter_events,
            }
            return json.dumps(state, separators=(",", ":"))

    def load_state(self, text: str) -> None:
        """Replace the state with one dump_state() wrote; ValueError if it is not one."""
        data = json.loads(text)
        if not isinstance(data, Mapping) or data.get("version") != STATE_VERSION:
            raise ValueError(f"not a Stripe stand-in state of version {STATE_VERSION}")
        try:
            objects = dict(data["objects"])
            ids_by_type = {k: list(v) for k, v in data["ids_by_type"].items()}
            idempotency = {
                (api_key, key): _StoredResponse((fp[0], fp[1], fp[2]), int(status), body, request_id)
                for api_key, key, fp, status, body, request_id in data["idempotency"]
            }
            anchors = {k: (int(v[0]), int(v[1])) for k, v in data["billing_anchor"].items()}
            undelivered = {event_id: None for event_id in data["undelivered"] if event_id in objects}
            clock = int(data["clock"])
            line_items = dict(data["checkout_line_items"])
            extra = dict(data["checkout_extra"])
            invoice_seq = int(data["invoice_seq"])
            created: Counter[str] = Counter(data["created"])
            meter_events = list(data["meter_events"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ValueError(f"a damaged Stripe stand-in state ({exc!r})") from None
        with self._lock:
            self._objects, self._ids_by_type, self._idempotency = objects, ids_by_type, idempotency
            self._billing_anchor, self._undelivered = anchors, undelivered
            self._clock, self._checkout_line_items, self._checkout_extra = clock, line_items, extra
            self._invoice_seq, self.created, self.meter_events = invoice_seq, created, meter_events

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ----------------------------------------------------------------- time

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
            # Connect: an event of a connected account names it, as Stripe's do on Connect endpoints.
            **({"account": self.account_id} if self.connected else {}),
            "request": {
                "id": context.request_id if context else None,
                "idempotency_key": context.idempotency_key if context else None,
            },
        }
        self._store(event)
        self._undelivered[event["id"]] = None
        return event
