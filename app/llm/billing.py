"""Billing finished LLM calls (bill_many, for the proxy's biller): one charge each through the metering
batch charge (app/metering/charging.py,
the same rules as REST /v1/charge: kit, quota, the key's budget, the balance floor, idempotency)
and the call's details (app/llm/models.py) in the same transaction.

What is charged:
- `llm.passthrough` when the upstream reported its USD cost (OpenRouter's `usage.cost`): priced
  cost x llm.passthrough_markup / credit_value_usd by the catalog (app/pricing/service.py);
- `llm.tokens` otherwise, for the price-table model the request resolved to: input, output, cache
  read (at llm.cache_read_multiplier of the input rate, unless the model has its own) and cache
  creation tokens (at llm.cache_creation_multiplier) by the model's rates;
- nothing when the upstream reported no usage (an error, a stream that ended without it).
One call is quantity 1 of its primitive (what quotas and key quantity budgets count).

Exactly once per generation: the idempotency key is the upstream's generation id
(`llm:<provider>:<id>`), so billing the same generation again (a retried bill, a replayed stream)
answers the stored charge and writes nothing. The charge is for work already done: it is not a
pre-check, so it may take the balance down to -negative_buffer (the in-flight buffer), not below."""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Connection, Engine

from app.alerts.refusals import record_exhausted
from app.core.auth import TenantScope
from app.core.clock import Clock
from app.core.db import connection_of_work
from app.core.errors import DomainError
from app.core.sql import Sql, run, run_many, ts
from app.llm.usage import LlmUsage
from app.metering import charging
from app.metering.errors import InsufficientCredits
from app.metering.types import MAX_KEY, MAX_TOKENS, Charged, MeterRequest
from app.pricing.seed import SETTINGS as DEFAULT_SETTINGS
from app.pricing.service import MAX_USD

log = logging.getLogger("meterkit.llm")

PASSTHROUGH = "llm.passthrough"
TOKENS = "llm.tokens"
# Written out (app/core/sql.py): an expression built per call cost more than the insert itself.
_INSERT_CALL = Sql(
    """INSERT INTO llm_call (tenant_id, event_id, api_key_id, provider, primitive, requested_model, model,
       input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, markup, credits,
       generation_id, streamed, disconnected, created_at)
       VALUES (:tid, :event, :key_id, :provider, :primitive, :requested, :model, :tin, :tout, :tread, :twrite,
       :cost, :markup, :credits, :gid, :streamed, :gone, :now)"""
)
_MARKUP = Sql("SELECT value FROM pricing_setting WHERE key = 'llm.passthrough_markup'")


@dataclass(frozen=True)
class CallFacts:
    """What the proxy knew before forwarding: who calls, through which provider, which model."""

    provider: str  # openrouter | openai | anthropic
    requested_model: str | None
    priced_model: str | None  # the price-table model it resolved to (None: billed by usage.cost)
    api_key_id: str | None
    streamed: bool
    request_id: str = ""  # a per-call id: the key when the upstream gives no generation id

    @staticmethod
    def new_request_id() -> str:
        return uuid.uuid4().hex


def idempotency_key(provider: str, generation_id: str | None, request_id: str) -> str:
    key = f"llm:{provider}:{generation_id}" if generation_id else f"llm:{provider}:req:{request_id}"
    if len(key) > MAX_KEY:  # an unusually long upstream id: its digest, still one per generation
        key = f"llm:{provider}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return key


def meter_request(facts: CallFacts, usage: LlmUsage) -> MeterRequest | None:
    """The charge of a finished call; None when the upstream reported nothing billable."""
    if not usage.any:
        return None
    key = idempotency_key(facts.provider, usage.generation_id, facts.request_id)
    cap = MAX_TOKENS
    reference = usage.generation_id[:255] if usage.generation_id else None
    if usage.cost_usd is not None and facts.priced_model is None:
        primitive, model = PASSTHROUGH, (usage.model or facts.requested_model or "")[:200] or None
        cost: Decimal | None = min(usage.cost_usd, MAX_USD).quantize(Decimal("1e-12")).normalize()
    elif facts.priced_model is not None:
        primitive, model, cost = TOKENS, facts.priced_model, None
    else:
        return None
    return MeterRequest(
        primitive,
        key,
        1,
        model=model,
        input_tokens=min(usage.input_tokens, cap),
        output_tokens=min(usage.output_tokens, cap),
        cache_read_tokens=min(usage.cache_read_tokens, cap),
        cache_creation_tokens=min(usage.cache_write_tokens, cap),
        cost_usd=cost,
        reference=reference,
        api_key_id=facts.api_key_id,
    )


@dataclass(frozen=True)
class Finished:
    """A finished call to bill: who, what was asked, what the upstream reported."""

    scope: TenantScope
    facts: CallFacts
    usage: LlmUsage
    disconnected: bool = False


def bill_many(
    engine: Engine, clock: Clock, calls: list[Finished], *, negative_buffer: int
) -> list[Charged | DomainError | None]:
    """Charge many finished calls and record their details in ONE transaction (the proxy's biller,
    app/llmproxy/biller.py): the metering batch charge (app/metering/charging.py charge_batch, the
    same rules as `bill` item by item, set-based), then one insert of the accepted calls' rows.
    Per call, in order: its Charged, the DomainError that refused it (it writes nothing), or None
    (nothing to bill)."""
    out: list[Charged | DomainError | None] = [None] * len(calls)
    billable = [(i, req) for i, c in enumerate(calls) if (req := meter_request(c.facts, c.usage)) is not None]
    if not billable:
        return out
    with connection_of_work(engine) as conn:
        outcomes = charging.charge_batch(
            conn, clock, [(calls[i].scope, req) for i, req in billable], negative_buffer=negative_buffer
        )
        rows: list[dict[str, Any]] = []
        markup: str | None = None
        now = ts(conn, clock.now())
        for (i, req), outcome in zip(billable, outcomes, strict=True):
            out[i] = outcome
            if isinstance(outcome, Charged) and not outcome.replayed:
                if req.primitive == PASSTHROUGH and markup is None:
                    markup = _markup(conn)
                rows.append(_call_row(calls[i], req, outcome, markup if req.primitive == PASSTHROUGH else None, now))
        if rows:
            run_many(conn, _INSERT_CALL, rows)
    for result in out:
        if isinstance(result, InsufficientCredits):
            record_exhausted(engine, clock, result)
    return out


def _markup(conn: Connection) -> str:
    row = run(conn, _MARKUP, {}).first()
    return str(row[0]) if row is not None else str(DEFAULT_SETTINGS["llm.passthrough_markup"])


def _call_row(
    call: Finished, req: MeterRequest, charged: Charged, markup: str | None, now: object
) -> dict[str, object]:
    facts, usage = call.facts, call.usage
    return {
        "tid": call.scope.tenant_id,
        "event": charged.event_id,
        "key_id": facts.api_key_id,
        "provider": facts.provider,
        "primitive": req.primitive,
        "requested": (facts.requested_model or "")[:200] or None,
        "model": req.model,
        "tin": req.input_tokens,
        "tout": req.output_tokens,
        "tread": req.cache_read_tokens,
        "twrite": req.cache_creation_tokens,
        "cost": None if usage.cost_usd is None else format(usage.cost_usd, "f")[:40],
        "markup": markup,
        "credits": charged.credits_used,
        "gid": usage.generation_id,
        "streamed": facts.streamed,
        "gone": call.disconnected,
        "now": now,
    }
