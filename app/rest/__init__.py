"""REST /v1: status, usage, pricing, billing and metering routes as thin layers over the
services GraphQL calls, and /openapi.json generated from the same models. Every route declares
the key scope it needs (`Endpoint.needs`: read, meter or manage)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.rest import billing, metering, pricing, status
from app.rest.base import Endpoint, Rest, handler, json_bytes
from app.rest.openapi import document


def endpoints() -> list[Endpoint]:
    return [*status.endpoints(), *pricing.endpoints(), *billing.endpoints(), *metering.endpoints()]


def hot_routes(state: Any) -> dict[tuple[str, str], Callable[[Request], Awaitable[Response]]]:
    """The hand-written hot handlers by (method, path), for the app's fast lane (app/main.py)."""
    rest = Rest(state.engine, state.settings, state.clock)
    return {(ep.method, ep.path): ep.custom(rest) for ep in endpoints() if ep.custom is not None}


def routes(state: Any) -> list[Route]:
    rest = Rest(state.engine, state.settings, state.clock)
    eps = endpoints()
    spec = json_bytes(document(eps))

    async def openapi(_: Request) -> Response:
        return Response(spec, media_type="application/json")

    # The hand-written hot routes (POST /v1/charge) first: the router tries routes in order.
    hot_first = sorted(eps, key=lambda ep: ep.custom is None)
    out = [Route(ep.path, ep.custom(rest) if ep.custom else handler(ep, rest), methods=[ep.method]) for ep in hot_first]
    out.append(Route("/openapi.json", openapi, methods=["GET"]))
    return out
