"""POST /v1/charge: the same service call as the GraphQL `charge`, on a plain Starlette route.
It answers in the brief's REST shape (credits_used / credits_remaining, 402 insufficient_credits)
and is the floor the GraphQL layer is measured against in `make bench`."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.budgets.errors import BudgetExceeded
from app.core.auth import ScopeDenied, require_scope
from app.core.db import connection_of_work, inline_sqlite
from app.core.errors import DomainError, NotFound, ValidationFailed
from app.core.money import format_credits
from app.http.edge import AuthError, bearer, resolve_principal
from app.integrations.stripe.service import purchase_path
from app.metering import errors as merr
from app.metering import service

_STATUS = {
    merr.InsufficientCredits: 402,
    merr.QuotaExceeded: 429,
    BudgetExceeded: 429,
    merr.LimitExceeded: 429,
    merr.NotEntitled: 403,
    merr.IdempotencyConflict: 409,
    NotFound: 404,
    ValidationFailed: 400,
}


def _error(exc: DomainError) -> Response:
    body: dict[str, Any] = {"error": exc.code.lower(), "message": exc.message}
    if isinstance(exc, merr.InsufficientCredits):
        body.update(
            required=format_credits(exc.required),
            available=format_credits(exc.available),
            packs=[
                {"key": p.key, "credits": format_credits(p.credits), "purchase_path": purchase_path(p.key)}
                for p in exc.packs
            ],
        )
    return JSONResponse(body, status_code=next((v for k, v in _STATUS.items() if isinstance(exc, k)), 400))


def routes(state: Any) -> list[Route]:
    async def charge(request: Request) -> Response:
        try:
            raw = json.loads(await request.body())
            if not isinstance(raw, dict):
                raise ValueError
            req = service.MeterRequest(
                primitive=str(raw.get("primitive", "")),
                idempotency_key=str(raw.get("idempotencyKey", "")),
                quantity=int(raw.get("quantity", 1)),
                reference=raw.get("reference"),
                connection=raw.get("connection"),
            )
        except (ValueError, TypeError):
            return JSONResponse({"error": "validation_failed", "message": "body must be a JSON object"}, 400)
        headers = request.headers
        buffer = state.settings.negative_buffer_credits * 1_000_000

        def run() -> service.Charged:
            principal, scope = resolve_principal(
                state.engine,
                bearer(request),
                headers.get("x-tenant-id"),
                state.settings.auth_cache_seconds,
                state.clock,
            )
            if principal is not None:
                require_scope(principal, "meter")
            if scope is None:
                raise ValidationFailed("no tenant in scope", field="X-Tenant-Id")
            keyed = replace(req, api_key_id=principal.key_id if principal else None)
            with connection_of_work(state.engine) as conn:
                return service.charge(conn, state.clock, scope, keyed, negative_buffer=buffer)

        try:
            res = run() if inline_sqlite(state.engine, state.settings) else await run_in_threadpool(run)
        except AuthError as exc:
            return exc.response()
        except ScopeDenied as exc:
            return JSONResponse({"error": "forbidden", "message": str(exc)}, 403)
        except DomainError as exc:
            return _error(exc)
        return JSONResponse(
            {
                "event_id": str(res.event_id),
                "credits_used": format_credits(res.credits_used),
                "credits_remaining": format_credits(res.credits_remaining),
                "replayed": res.replayed,
                "usage": {
                    "primitive": res.usage.primitive,
                    "used": res.usage.used,
                    "quota": res.usage.quota,
                    "remaining": res.usage.remaining,
                },
            }
        )

    return [Route("/v1/charge", charge, methods=["POST"])]
