"""Refusals in the shape each provider's SDK reads, so the client surfaces them as its own errors:
OpenAI and OpenRouter `{"error": {"message", "type", "code", "param"}}`, Anthropic
`{"type": "error", "error": {"type", "message"}}`. meterkit's own details (the packs that cover an
insufficient balance, the model suggestions) ride along inside `error`."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import simplejson
from starlette.responses import Response

from app.core.money import MICRO, format_credits
from app.metering.errors import PackInfo

TOPUP_PATH = "/v1/billing/topup"

# meterkit code -> (HTTP status, OpenAI-style type, Anthropic-style type)
_KINDS: dict[str, tuple[int, str, str]] = {
    "UNAUTHENTICATED": (401, "invalid_request_error", "authentication_error"),
    "FORBIDDEN": (403, "invalid_request_error", "permission_error"),
    "NOT_ENTITLED": (403, "invalid_request_error", "permission_error"),
    "TENANT_NOT_FOUND": (404, "invalid_request_error", "not_found_error"),
    "INSUFFICIENT_CREDITS": (402, "insufficient_credits", "insufficient_credits"),
    # An end user whose organization is out of credits: its own code, no balance, no packs.
    "ORGANIZATION_CREDITS_EXHAUSTED": (402, "insufficient_credits", "insufficient_credits"),
    "END_USER_CREDIT_CAP": (429, "rate_limit_error", "rate_limit_error"),
    "QUOTA_EXCEEDED": (429, "rate_limit_error", "rate_limit_error"),
    "LIMIT_EXCEEDED": (429, "rate_limit_error", "rate_limit_error"),
    "BUDGET_EXCEEDED": (429, "rate_limit_error", "rate_limit_error"),
    "TOO_MANY_REQUESTS": (429, "rate_limit_error", "rate_limit_error"),
    "UNKNOWN_MODEL": (400, "invalid_request_error", "invalid_request_error"),
    "UNKNOWN_PRIMITIVE": (403, "invalid_request_error", "permission_error"),
    "VALIDATION_FAILED": (400, "invalid_request_error", "invalid_request_error"),
    "NOT_PROXIED": (404, "invalid_request_error", "not_found_error"),
    "UPSTREAM_NOT_CONFIGURED": (503, "api_error", "api_error"),
    "UPSTREAM_UNAVAILABLE": (502, "api_error", "api_error"),
    "DATABASE_UNAVAILABLE": (503, "api_error", "overloaded_error"),
}

_ENCODER = simplejson.JSONEncoder(use_decimal=True, separators=(",", ":"))


@dataclass
class Refusal(Exception):
    """A call the proxy does not forward (or cannot), with meterkit's code."""

    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> int:
        return _KINDS.get(self.code, (400, "", ""))[0]


def credits(micro: int) -> Decimal:
    whole, fraction = divmod(micro, MICRO)
    return Decimal(whole) if not fraction else Decimal(format_credits(micro))


def pack_offers(packs: list[PackInfo]) -> list[dict[str, Any]]:
    """As REST's 402 lists them: how much, for what, and the request that buys each."""
    return [
        {
            "key": p.key,
            "name": p.name,
            "credits": credits(p.credits),
            "price_usd": Decimal(p.price_usd_cents) / 100,
            "purchase": {"method": "POST", "path": TOPUP_PATH, "body": {"pack": p.key}},
            "quantity": p.quantity,
        }
        for p in packs
    ]


def render(refusal: Refusal, flavor: str) -> Response:
    """The refusal as `flavor` (openai | anthropic) writes its errors."""
    status, openai_type, anthropic_type = _KINDS.get(refusal.code, (400, "invalid_request_error", "api_error"))
    code = refusal.code.lower()
    if flavor == "anthropic":
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": anthropic_type, "message": refusal.message, "code": code, **refusal.extra},
        }
    else:
        body = {
            "error": {"message": refusal.message, "type": openai_type, "code": code, "param": None, **refusal.extra}
        }
    return Response(
        _ENCODER.encode(body).encode(), status_code=status, media_type="application/json", headers=refusal.headers
    )
