"""The HTTP side of the local Stripe stand-in: authentication, routing a request to its resource
handler, idempotency keys (replays and mismatches as Stripe answers them) and the request log.
FakeStripe supplies the route table."""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Callable, Mapping
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from app.devtools.stripe_fake.params import JSON, StripeApiError, decode_form
from app.devtools.stripe_fake.store import RecordedRequest, StripeState, _new_id, _RequestContext, _StoredResponse

Handler = Callable[..., JSON]


class HttpMixin(StripeState):
    """The API's HTTP plumbing; the handlers it routes to are the resource mixins' methods."""

    _routes: list[tuple[str, re.Pattern[str], Handler]]

    def forget_idempotency_keys(self) -> None:
        """What Stripe does to keys older than 24 hours: a replay becomes a new request."""
        with self._lock:
            self._idempotency.clear()

    async def _endpoint(self, request: Request) -> Response:
        body = (await request.body()).decode("utf-8", "replace")
        try:
            target = self._account_for(request.headers)
        except StripeApiError as exc:
            return Response(json.dumps(exc.body), status_code=exc.status, media_type="application/json")
        status, text, headers = target._handle(
            request.method, request.url.path, request.url.query, body, request.headers
        )
        return Response(text, status_code=status, headers=headers, media_type="application/json")

    def _account_for(self, headers: Mapping[str, str]) -> HttpMixin:
        """Which account a request acts on: a connected account named by `Stripe-Account` (the
        platform's secret key acting for it), the account a restricted key belongs to, else the
        platform's own. A restricted key the fake does not know is refused, as a revoked one is."""
        accounts: dict[str, HttpMixin] = getattr(self, "_accounts", {})
        keys: dict[str, str] = getattr(self, "_restricted_keys", {})
        header = headers.get("authorization") or ""
        key = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
        acting = headers.get("stripe-account")
        with self._lock:
            if key.startswith("rk_"):
                owner = keys.get(key)
                if owner is None:
                    raise StripeApiError(401, f"Invalid API Key provided: {key[:8]}****")
                if acting is not None and acting != owner:
                    raise StripeApiError(403, "The provided key does not have access to account '" + acting + "'.")
                return accounts[owner]
            if acting is None:
                return self
            child = accounts.get(acting)
            if child is None or not child.connected:
                raise StripeApiError(
                    403,
                    f"The provided key does not have access to account '{acting}' (or that account does not "
                    "exist). Application access may have been revoked.",
                    type_="invalid_request_error",
                )
            return child

    def _handle(
        self, method: str, path: str, query: str, body: str, headers: Mapping[str, str]
    ) -> tuple[int, str, dict[str, str]]:
        request_id = _new_id("req")
        out_headers = {"Request-Id": request_id, "Stripe-Version": headers.get("stripe-version", self.api_version)}
        idempotency_key = headers.get("idempotency-key") if method == "POST" else None
        if idempotency_key:
            out_headers["Idempotency-Key"] = idempotency_key
        params: JSON = {}
        with self._lock:
            try:
                api_key = self._authenticate(headers.get("authorization"))
                handler, path_args = self._route(method, path)
                params = decode_form(body if method == "POST" else query)
            except StripeApiError as exc:
                return self._finish(method, path, params, idempotency_key, exc.status, exc.body, out_headers)

            # Stripe only honours idempotency keys on POST; other verbs are naturally idempotent.
            fingerprint = (method, path, json.dumps(params, sort_keys=True))
            store_key = (api_key, idempotency_key) if idempotency_key else None
            stored = self._idempotency.get(store_key) if store_key else None
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    error = StripeApiError(
                        400,
                        (
                            "Keys for idempotent requests can only be used with the same parameters they were "
                            f"first used with. Try using a key other than '{idempotency_key}' if you meant to "
                            "execute a different request."
                            if stored.fingerprint[:2] == fingerprint[:2]
                            else "Keys for idempotent requests can only be used for the same endpoint they were "
                            f"first used for ('{stored.fingerprint[1]}' vs '{path}')."
                        ),
                        type_="idempotency_error",
                    )
                    return self._finish(method, path, params, idempotency_key, 400, error.body, out_headers)
                out_headers.update({"Idempotent-Replayed": "true", "Original-Request": stored.request_id})
                self.requests.append(RecordedRequest(method, path, params, idempotency_key, stored.status, True))
                return stored.status, stored.body, out_headers

            self._context = _RequestContext(request_id, idempotency_key)
            try:
                status, payload = 200, handler(params, **path_args)
            except StripeApiError as exc:
                status, payload = exc.status, exc.body
            except Exception as exc:  # a bug in the fake: answer like Stripe's 500 and keep the traceback
                self.errors.append(traceback.format_exc())
                status, payload = 500, StripeApiError(500, f"fake Stripe crashed: {exc!r}", type_="api_error").body
            finally:
                self._context = None
            status, text, out_headers = self._finish(
                method, path, params, idempotency_key, status, payload, out_headers
            )
            # Only successes are kept, so a request rejected by validation can be retried with its key.
            if store_key is not None and status == 200:
                self._idempotency[store_key] = _StoredResponse(fingerprint, status, text, request_id)
            if method != "GET" and status == 200:
                self._changed()
            return status, text, out_headers

    def _finish(
        self,
        method: str,
        path: str,
        params: JSON,
        idempotency_key: str | None,
        status: int,
        payload: JSON,
        headers: dict[str, str],
    ) -> tuple[int, str, dict[str, str]]:
        self.requests.append(RecordedRequest(method, path, params, idempotency_key, status, False))
        return status, json.dumps(payload, indent=2), headers

    @staticmethod
    def _authenticate(header: str | None) -> str:
        if not header or not header.startswith("Bearer ") or not header[len("Bearer ") :].strip():
            raise StripeApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        key = header[len("Bearer ") :].strip()
        # Test-mode keys only: a live key reaching a test server means a misconfigured test.
        if not key.startswith(("sk_test_", "rk_test_")):
            raise StripeApiError(401, f"Invalid API Key provided: {key[:8]}****")
        return key

    def _route(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        for route_method, pattern, handler in self._routes:
            match = pattern.match(path)
            if match and route_method == method:
                return handler, {k: unquote(v) for k, v in match.groupdict().items()}
        raise StripeApiError(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        )
