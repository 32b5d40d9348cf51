"""The metered call over REST: POST /v1/charge, /v1/reserve, /v1/holds/{id}/settle and
/v1/holds/{id}/release, over the same commands as the GraphQL mutations (app/metering/commands.py).

POST /v1/charge is also the floor `make bench` measures GraphQL against, so its handler is
written out: the key check and the whole charge command run in ONE thread hop (none on
SQLite inline), with no statement beyond the command's own."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import ConfigDict, Field
from pydantic import ValidationError as ModelError
from sqlalchemy.exc import DataError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from app.core import public_ids
from app.core.auth import ScopeDenied, require_scope
from app.core.errors import DomainError
from app.core.ids import parse_id
from app.core.public_ids import IdCodec
from app.http.edge import AuthError, BadInput, check_json_body, parse_authorization, resolve_principal, rest_code
from app.metering import commands, types
from app.pricing.service import MAX_DURATION, MAX_USD, parse_decimal
from app.rest.base import (
    JSON,
    Call,
    Endpoint,
    Money,
    Out,
    RawJSON,
    Rest,
    Strict,
    credits,
    credits_text,
    domain_error,
    error_body,
    invalid,
    json_string,
    log,
    no_tenant,
    scope_denied,
    unauthenticated,
)

HINT = "Credits charged on completion only."
_DECIMAL = r"^\s*[0-9]{1,7}(\.[0-9]{1,12})?\s*$"


class Details(Strict):
    """What a dynamic price needs; fixed prices need none of it."""

    model: str | None = Field(None, max_length=200, description="llm.tokens, image.generate, video.generate")
    input_tokens: int = Field(0, ge=0, le=types.MAX_TOKENS)
    output_tokens: int = Field(0, ge=0, le=types.MAX_TOKENS)
    cache_read_tokens: int = Field(0, ge=0, le=types.MAX_TOKENS)
    cache_creation_tokens: int = Field(0, ge=0, le=types.MAX_TOKENS)
    cost_usd: str | None = Field(
        None, pattern=_DECIMAL, description='llm.passthrough: upstream USD as a decimal string, e.g. "0.0123"'
    )
    elapsed_seconds: int | None = Field(None, ge=0, le=10**9, description="browser.session.time")
    num_images: int | None = Field(None, ge=1, le=10_000, description="image.generate")
    duration_seconds: str | None = Field(
        None, pattern=_DECIMAL, description='video.generate: seconds as a decimal string, e.g. "5"'
    )


class Usage(Strict):
    """The metered call's parameters, as the GraphQL MeterInput."""

    primitive: str = Field(min_length=1, max_length=64, examples=["email.send"])
    quantity: int = Field(1, ge=1, le=types.MAX_QUANTITY)
    reference: str | None = Field(None, max_length=255)
    connection: str | None = Field(
        None, min_length=1, max_length=64, description="The connection used (e.g. gmail); the kit must allow it"
    )
    details: Details | None = None


class ChargeBody(Usage):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"primitive": "email.send", "idempotency_key": "msg-42", "reference": "msg-42"},
                {
                    "primitive": "llm.tokens",
                    "idempotency_key": "run-7-step-3",
                    "details": {"model": "claude-sonnet-4.5", "input_tokens": 1200, "output_tokens": 300},
                },
            ]
        }
    )

    idempotency_key: str = Field(min_length=1, max_length=types.MAX_KEY)
    precheck: bool = Field(
        False,
        description="Also refuse (402) when the available balance is already at or below zero before this "
        "charge: for platforms that charge before running the operation. Default: the operation already "
        "succeeded, so the charge may take the balance down to the negative buffer.",
    )


class ReserveBody(Usage):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"primitive": "research.thorough", "idempotency_key": "job-1"}]}
    )

    idempotency_key: str = Field(min_length=1, max_length=types.MAX_KEY)
    ttl_seconds: int | None = Field(None, ge=1, le=7 * 86400, description="Default: METERKIT_HOLD_TTL_SECONDS")


class SettleBody(Strict):
    actual: Usage | None = Field(None, description="What the job actually used; default: the reserved estimate")


class ReleaseBody(Strict):
    pass


class PrimitiveUsage(Out):
    primitive: str
    used: int
    quota: int | None
    remaining: int | None
    overage: int


class ChargeOut(Out):
    """A recorded charge: credits_used and credits_remaining (the available balance)."""

    event_id: str
    credits_used: Money
    credits_remaining: Money
    replayed: bool = Field(description="True when this is the stored result of an earlier call with the same key")
    usage: PrimitiveUsage


class SettleCutOut(Out):
    """A settle charged only what the limits admit; the hold is settled all the same."""

    code: str = Field(description="limit_exceeded, quota_exceeded, budget_exceeded or insufficient_credits")
    message: str
    limits: list[str] = Field(
        description="maxQuantityPerCall, quota, keyQuantityBudget, keyCreditBudget, balanceFloor (those that cut)"
    )
    requested_quantity: int
    charged_quantity: int
    requested_credits: Money
    charged_credits: Money


class SettleOut(ChargeOut):
    cut: SettleCutOut | None = Field(None, description="Present only when the limits admitted less than the actual")


class ReserveOut(Out):
    """An async job's submission: the estimate is held, and charged on completion only."""

    job_id: str = Field(description="The hold id (same as hold_id): settle or release it by this id")
    hold_id: str
    estimated_credits: Money
    hint: str
    status: str
    expires_at: datetime
    replayed: bool


class ReleaseOut(Out):
    hold_id: str
    status: str
    amount: Money
    credits_remaining: Money | None = Field(description="Available after the release; null on a replay")
    replayed: bool


def to_request(body: Usage, key: str, api_key_id: str | None) -> types.MeterRequest:
    """`api_key_id`: the key that made the call, recorded with the event."""
    d = body.details
    if d is None:  # the common case: a fixed price
        return types.MeterRequest(
            body.primitive,
            key,
            body.quantity,
            reference=body.reference,
            api_key_id=api_key_id,
            connection=body.connection,
        )
    return types.MeterRequest(
        api_key_id=api_key_id,
        primitive=body.primitive,
        idempotency_key=key,
        quantity=body.quantity,
        reference=body.reference,
        connection=body.connection,
        model=d.model,
        input_tokens=d.input_tokens,
        output_tokens=d.output_tokens,
        cache_read_tokens=d.cache_read_tokens,
        cache_creation_tokens=d.cache_creation_tokens,
        cost_usd=_decimal(d.cost_usd, "costUsd", MAX_USD),
        elapsed_seconds=d.elapsed_seconds,
        num_images=d.num_images,
        duration_seconds=_decimal(d.duration_seconds, "durationSeconds", MAX_DURATION),
    )


def _decimal(value: str | None, name: str, hi: Decimal) -> Decimal | None:
    return None if value is None else parse_decimal(value, name, lo=Decimal(0), hi=hi)


# Service field names inside `details`, as REST names them.
DETAIL_FIELDS = {
    name: f"details.{snake_name}"
    for name, snake_name in {
        "model": "model",
        "inputTokens": "input_tokens",
        "input_tokens": "input_tokens",
        "outputTokens": "output_tokens",
        "output_tokens": "output_tokens",
        "cacheReadTokens": "cache_read_tokens",
        "cache_read_tokens": "cache_read_tokens",
        "cacheCreationTokens": "cache_creation_tokens",
        "cache_creation_tokens": "cache_creation_tokens",
        "costUsd": "cost_usd",
        "elapsedSeconds": "elapsed_seconds",
        "numImages": "num_images",
        "durationSeconds": "duration_seconds",
        "duration": "duration_seconds",
    }.items()
}


# settle's service fields live under `actual` in its body.
SETTLE_FIELDS = {
    **{name: f"actual.{rest_name}" for name, rest_name in DETAIL_FIELDS.items()},
    **{name: f"actual.{name}" for name in ("primitive", "quantity", "reference")},
    "holdId": "hold_id",
}


def charged(res: types.Charged, ids: IdCodec) -> dict[str, Any]:
    u = res.usage
    return {
        "event_id": ids.encode(public_ids.EVENT, res.event_id),
        "credits_used": credits(res.credits_used),
        "credits_remaining": credits(res.credits_remaining),
        "replayed": res.replayed,
        "usage": {
            "primitive": u.primitive,
            "used": u.used,
            "quota": u.quota,
            "remaining": u.remaining,
            "overage": u.overage,
        },
    }


def charged_bytes(res: types.Charged, ids: IdCodec) -> bytes:
    """json_bytes(charged(res, ids)), written out for the hot path: no dict, no Decimal, no encoder."""
    u = res.usage
    quota, remaining = u.quota, u.remaining
    return (
        f'{{"event_id":"{ids.encode(public_ids.EVENT, res.event_id)}","credits_used":{credits_text(res.credits_used)},'
        f'"credits_remaining":{credits_text(res.credits_remaining)},"replayed":{"true" if res.replayed else "false"},'
        f'"usage":{{"primitive":{json_string(u.primitive)},"used":{u.used},'
        f'"quota":{"null" if quota is None else quota},"remaining":{"null" if remaining is None else remaining},'
        f'"overage":{u.overage}}}}}'
    ).encode()


def charge_handler(rest: Rest) -> Any:
    """POST /v1/charge, written out for the hot path (see the module docstring)."""
    engine, settings, clock = rest.engine, rest.settings, rest.clock
    buffer = rest.negative_buffer
    ttl = settings.auth_cache_seconds
    uow = rest.uow
    inline = uow.inline  # fixed for the app's life: read once, not per request
    codec: list[IdCodec] = []  # the engine's id codec, looked up on the first answer (it reads the database)

    def run(raw_key: str | None, tenant: str | None, body: ChargeBody) -> types.Charged:
        principal, scope = resolve_principal(engine, raw_key, tenant, ttl, clock)
        if principal is None:
            raise unauthenticated()
        require_scope(principal, "meter")
        if scope is None:
            raise no_tenant()
        req = to_request(body, body.idempotency_key, principal.key_id)
        return commands.charge(engine, clock, scope, req, negative_buffer=buffer, precheck=body.precheck)

    async def charge(request: Request) -> Response:
        # The three headers in one pass over the scope's list and the body straight from receive: what
        # Starlette's Headers and body stream answer (the first of a repeated header), without their layers.
        auth = tenant = content_type = None
        for name, value in request.scope["headers"]:
            if name == b"authorization":
                auth = value.decode("latin-1") if auth is None else auth
            elif name == b"x-tenant-id":
                tenant = value.decode("latin-1") if tenant is None else tenant
            elif name == b"content-type":
                content_type = value.decode("latin-1") if content_type is None else content_type
        raw = await _body(request.receive)
        try:
            key = parse_authorization(auth)
            try:
                check_json_body(content_type, raw)
                body = ChargeBody.model_validate_json(raw)
            except (ModelError, BadInput) as exc:
                # The key first, as everywhere: a missing or bad key is a 401 whatever the body.
                if key is None:
                    raise unauthenticated() from None
                principal, _ = await uow.call(resolve_principal, engine, key, tenant, ttl, clock)
                if principal is not None:
                    require_scope(principal, "meter")
                return exc.response() if isinstance(exc, BadInput) else invalid(exc)
            # Inline SQLite: called straight, not even through the runner's coroutine. Otherwise the
            # key check and the whole charge in one thread hop, run once more on PostgreSQL's race.
            res = run(key, tenant, body) if inline else await uow.call(run, key, tenant, body, retry=True)
        except AuthError as exc:
            return exc.response()
        except ScopeDenied as exc:
            return scope_denied(exc)
        except DomainError as exc:
            return domain_error(exc, DETAIL_FIELDS)
        except DataError as exc:
            log.warning("database refused a value: %s", exc.orig)
            return JSON(error_body("VALIDATION_FAILED", "a value does not fit its column"), status_code=400)
        if not codec:
            codec.append(public_ids.codec(engine))
        return RawJSON(charged_bytes(res, codec[0]))

    return charge


async def _body(receive: Any) -> bytes:
    """The request body, as Request.body() reads it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


async def reserve(call: Call) -> ReserveOut:
    body: ReserveBody = call.body
    scope, rest = call.tenant(), call.rest
    req = to_request(body, body.idempotency_key, call.principal.key_id)
    ttl = body.ttl_seconds or rest.settings.hold_ttl_seconds
    hold = await rest.uow.call(
        commands.reserve,
        rest.engine,
        rest.clock,
        scope,
        req,
        negative_buffer=rest.negative_buffer,
        ttl_seconds=ttl,
        retry=True,
    )
    return ReserveOut(
        job_id=hold.id,
        hold_id=hold.id,
        estimated_credits=credits(hold.amount),
        hint=HINT,
        status=hold.status,
        expires_at=hold.expires_at,
        replayed=hold.replayed,
    )


async def settle(call: Call) -> dict[str, Any]:
    body: SettleBody = call.body
    scope, rest = call.tenant(), call.rest
    hold_id = parse_id(call.param("hold_id"), "hold", field="hold_id")
    key_id = call.principal.key_id
    actual = to_request(body.actual, f"hold:{hold_id}", key_id) if body.actual is not None else None
    res = await rest.uow.call(
        commands.settle,
        rest.engine,
        rest.clock,
        scope,
        hold_id,
        actual,
        negative_buffer=rest.negative_buffer,
        api_key_id=key_id,
        retry=True,
    )
    out = charged(res, public_ids.codec(rest.engine))
    c = res.cut
    if c is not None:  # only then: an uncut settle answers exactly as a charge does
        out["cut"] = {
            "code": rest_code(c.code),
            "message": c.message,
            "limits": list(c.limits),
            "requested_quantity": c.requested_quantity,
            "charged_quantity": c.charged_quantity,
            "requested_credits": credits(c.requested_credits),
            "charged_credits": credits(c.charged_credits),
        }
    return out


async def release(call: Call) -> ReleaseOut:
    scope, rest = call.tenant(), call.rest
    hold_id = parse_id(call.param("hold_id"), "hold", field="hold_id")
    hold = await rest.uow.call(commands.release, rest.engine, rest.clock, scope, hold_id, retry=True)
    return ReleaseOut(
        hold_id=hold.id,
        status=hold.status,
        amount=credits(hold.amount),
        credits_remaining=credits(hold.available_after) if hold.available_after is not None else None,
        replayed=hold.replayed,
    )


METER_REFUSALS = (402, 403, 409, 429)


def endpoints() -> list[Endpoint]:
    return [
        Endpoint(
            "POST",
            "/v1/charge",
            "meter",
            "Charge a metered call exactly once per idempotency key",
            None,
            ChargeOut,
            body=ChargeBody,
            refusals=METER_REFUSALS,
            fields=DETAIL_FIELDS,
            description="For a synchronous operation that succeeded (no charge on failure). The same key with the "
            "same body answers the stored result (`replayed: true`); with another body, 409 IDEMPOTENCY_CONFLICT. "
            "402 INSUFFICIENT_CREDITS lists packs that cover the shortfall. Set `precheck` when you charge "
            "before running the operation.",
            custom=charge_handler,
        ),
        Endpoint(
            "POST",
            "/v1/reserve",
            "meter",
            "Hold the estimate of an async job (its pre-check at submission)",
            reserve,
            ReserveOut,
            body=ReserveBody,
            refusals=METER_REFUSALS,
            fields=DETAIL_FIELDS,
            description="Refused (402) when the available balance is at or below zero or below the estimate. "
            "The hold lowers the available balance until it is settled, released or expires.",
        ),
        Endpoint(
            "POST",
            "/v1/holds/{hold_id}/settle",
            "meter",
            "The job succeeded: charge the actual cost (default: the estimate) and free the rest",
            settle,
            SettleOut,
            body=SettleBody,
            body_optional=True,
            refusals=(402, 409),
            fields=SETTLE_FIELDS,
            description="Work already done is never refused by a limit: the settle charges what maxQuantityPerCall, "
            "the quota (when the plan refuses overage), the key's budget and the balance floor admit, closes the "
            "hold, and names the rest in `cut`.",
        ),
        Endpoint(
            "POST",
            "/v1/holds/{hold_id}/release",
            "meter",
            "The job failed: free the hold, charge nothing",
            release,
            ReleaseOut,
            body=ReleaseBody,
            body_optional=True,
            refusals=(409,),
            fields={"holdId": "hold_id"},
        ),
    ]
