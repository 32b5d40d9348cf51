"""One ASGI layer around every HTTP request (outermost but for CORS): its X-Request-Id (the
client's when safe, else ours) set for the request's context and returned in the response
header; then, when the request is done, its duration and status observed in the request
histogram (METERKIT_METRICS_ENABLED) and its one access log line written (METERKIT_ACCESS_LOG).

The route label is the matched route's template (`/v1/holds/{hold_id}/settle`), the hot charge
lane's path, or "unmatched" (404s: a client cannot mint label values with made-up paths); for
/graphql the operation label is "mutation charge" (app/observability/context.py)."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability import logs, metrics
from app.observability.context import CURRENT, RequestInfo, request_id_from

log = logging.getLogger("meterkit.http")

HOT_ROUTE = "meterkit.hot_route"  # scope key: the hot lane (app/main.py HotLane) served this path


class Observe:
    def __init__(self, app: ASGIApp, *, metrics_enabled: bool) -> None:
        self.app = app
        self.metrics_enabled = metrics_enabled
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                header = value
                break
        info = RequestInfo(request_id_from(header))
        rid = info.request_id.encode()
        token = CURRENT.set(info)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Starlette's ServerErrorMiddleware (outside) answers the 500; the trace is logged here,
            # with the request's id, so the line a customer quotes leads to it.
            log.exception("unhandled error in %s %s", scope["method"], _route(scope))
            status = 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = _route(scope)
            if self.metrics_enabled:
                key = (route, info.operation or "", status)
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = metrics.REQUEST_SECONDS.labels(route, info.operation or "", status)
                child.observe(elapsed)
            logs.access(
                scope["method"],
                route,
                info.operation,
                info.operation_name,
                status,
                elapsed * 1000,
                info.request_id,
                info.key_id,
                info.tenant_id,
            )
            CURRENT.reset(token)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    return str(scope.get(HOT_ROUTE) or "unmatched")
