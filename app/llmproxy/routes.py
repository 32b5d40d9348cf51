"""The proxy's routes: POST /v1/llm/chat/completions (OpenAI-compatible, to OpenRouter) and
/v1/proxy/{openrouter|openai|anthropic}/{path}, the drop-in for each provider's SDK base URL.

One call: (1) the path is billable, free (model lists) or refused; (2) ONE unit-of-work hop
authenticates the key (Bearer, or Anthropic's x-api-key; an operator key names its tenant with
X-Tenant-Id), resolves the model to the price table (app/llm/aliases.py; unknown: refused) and runs
the metering pre-check (kit gating, per-call limit, quota, the key's budget, the balance
threshold): a refusal answers in the provider's error shape and the upstream is never contacted;
(3) the request goes upstream with the provider key; (4) the answer comes back (a stream as it
arrives, app/llmproxy/relay.py) and the call is billed once from the usage the upstream reports
(app/llm/billing.py); an upstream error answer is passed back unchanged and costs nothing."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.core.auth import Principal, ScopeDenied, TenantScope, require_scope
from app.core.errors import DomainError, Unavailable
from app.core.uow import Runner
from app.http.edge import AuthError, parse_authorization, resolve_principal
from app.llm.aliases import KnownModels, UnknownModel, resolve
from app.llm.billing import PASSTHROUGH, TOKENS, CallFacts, Finished
from app.llm.usage import LlmUsage, anthropic_message, openai_apply, responses_apply
from app.llmproxy.biller import biller_for
from app.llmproxy.errors import Refusal, credits, pack_offers, render
from app.llmproxy.relay import MeteredStream, Relay
from app.llmproxy.upstream import Pools, Provider, UpstreamError, answer_headers, forward_headers, providers
from app.metering import commands
from app.metering.types import Charged, CheckResult

log = logging.getLogger("meterkit.llmproxy")

PREFIXES = ("/v1/llm/", "/v1/proxy/")


# Micro-credits a finished call may take the balance below zero (a billion credits: no floor). Only
# the bill of work already done uses it; admission keeps the -10 buffer (negative_buffer_credits).
FINISHED_CALL_BUFFER = 10**15


@dataclass
class Call:
    """A billable request as parsed before forwarding."""

    content: bytes  # what goes upstream
    model: str | None
    stream: bool
    drop_usage_chunk: bool  # the proxy asked for OpenAI's usage chunk: the client does not see it
    wire: str  # how the answer carries usage (Provider.wire)


@dataclass
class Admitted:
    principal: Principal
    scope: TenantScope
    priced_model: str | None = None
    verdict: CheckResult | None = None


class Proxy:
    def __init__(self, state: Any) -> None:
        self.engine, self.settings, self.clock = state.engine, state.settings, state.clock
        self.uow = Runner.of(self.engine, self.settings)
        self.providers = providers(self.settings)
        self.pools = Pools(self.settings)
        self.known = KnownModels(self.engine)
        self.buffer = self.settings.negative_buffer_credits * 1_000_000
        # The call is done and was admitted by the pre-check: it is billed in full, whatever the
        # balance is by now. A call that costs more than the balance and the in-flight buffer leaves
        # a debt (and the pre-check refuses new work until a top-up) instead of going unbilled:
        # admitted at 1 credit, a 50-credit call was otherwise free.
        self.biller = biller_for(self.uow, self.engine, self.clock, FINISHED_CALL_BUFFER)
        self._billing: set[asyncio.Task[Charged | None]] = set()

    async def aclose(self) -> None:
        if self._billing:  # bills still resolving their model, then everything queued
            await asyncio.gather(*self._billing, return_exceptions=True)
        await self.biller.aclose()
        await self.pools.aclose()

    # ---- routes

    async def chat(self, request: Request) -> Response:
        return await self.handle(request, "openrouter", "chat/completions")

    async def proxied(self, request: Request) -> Response:
        name = request.path_params["provider"]
        return await self.handle(request, name, request.path_params["path"])

    async def handle(self, request: Request, name: str, path: str) -> Response:
        provider = self.providers.get(name)
        flavor = provider.flavor if provider is not None else "openai"
        try:
            if provider is None:
                raise Refusal("NOT_PROXIED", f"no upstream named {name!r}: openrouter, openai or anthropic")
            kind = provider.classify(request.method, path)
            if kind == "refused":
                raise Refusal("NOT_PROXIED", f"{request.method} {path} is not proxied to {name}")
            raw_key = parse_authorization(request.headers.get("authorization")) or request.headers.get("x-api-key")
            tenant = request.headers.get("x-tenant-id")
            body = await request.body()
            call = self._parse(provider, provider.wire(path), body) if kind == "billable" else None
            admitted = await self.uow.call(
                self._admit, raw_key, tenant, call.model if call else None, billable=call is not None, name=name
            )
            verdict = admitted.verdict
            if verdict is not None and not verdict.allowed:
                raise _refusal(verdict)
            if provider.api_key is None:
                raise Refusal("UPSTREAM_NOT_CONFIGURED", f"the {name} upstream has no API key configured")
            if call is None:
                return await self._pass(provider, request, path, body)
            return await self._forward(provider, request, path, call, admitted)
        except Refusal as exc:
            return render(exc, flavor)
        except AuthError as exc:
            return render(Refusal(exc.code, exc.message), flavor)
        except ScopeDenied as exc:
            return render(Refusal("FORBIDDEN", str(exc)), flavor)
        except UnknownModel as exc:
            return render(Refusal(exc.code, exc.message, {"model": exc.model, "suggestions": exc.suggestions}), flavor)
        except Unavailable as exc:
            headers = {"Retry-After": str(exc.retry_after)}
            return render(Refusal(exc.code, exc.message, {"retryable": True}, headers), flavor)
        except DomainError as exc:
            return render(Refusal(exc.code, exc.message), flavor)

    # ---- before forwarding

    def _parse(self, provider: Provider, wire: str, body: bytes) -> Call:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise Refusal("VALIDATION_FAILED", "the request body must be a JSON object")
        model = payload.get("model")
        if model is not None and (not isinstance(model, str) or not model.strip() or len(model) > 200):
            raise Refusal("VALIDATION_FAILED", "model must be a non-empty string of at most 200 characters")
        if model is None and provider.name != "openrouter":  # OpenRouter has an account default model
            raise Refusal("VALIDATION_FAILED", "model is required")
        stream = payload.get("stream") is True
        drop = modified = False
        if provider.name == "openai" and wire == "openai" and stream:  # a Responses stream always ends with usage
            options = payload.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                drop = modified = True
        if provider.name == "openrouter" and "usage" not in payload:
            payload["usage"] = {"include": True}  # usage.cost in the answer (the last chunk of a stream)
            modified = True
        content = json.dumps(payload, separators=(",", ":")).encode() if modified else body
        return Call(content, model, stream, drop, wire)

    def _admit(
        self, raw_key: str | None, tenant: str | None, model: str | None, *, billable: bool, name: str
    ) -> Admitted:
        """Key, scope, model and the metering pre-check, in one hop; reads only."""
        s = self.settings
        principal, scope = resolve_principal(self.engine, raw_key, tenant, s.auth_cache_seconds, self.clock)
        if principal is None:
            raise AuthError(401, "UNAUTHENTICATED", "authentication required: Authorization: Bearer <key> or x-api-key")
        require_scope(principal, "meter")
        if scope is None:
            raise Refusal(
                "VALIDATION_FAILED", "no tenant in scope: use a tenant key, or an operator key with X-Tenant-Id"
            )
        if not billable:
            return Admitted(principal, scope)
        # OpenRouter is billed by the usage.cost it returns; the others by the price table.
        priced = None if name == "openrouter" else resolve(model or "", self.known.names(), s.llm_model_aliases)
        # No price details: a call's cost is unknown until it ends, so new work is refused at or below
        # zero (the threshold), as check answers when it has no price (quoting 0 tokens cost 1 ms more).
        verdict = commands.check(
            self.engine,
            self.clock,
            scope,
            primitive=TOKENS if priced else PASSTHROUGH,
            connection=None,
            api_key_id=principal.key_id,
        )
        return Admitted(principal, scope, priced, verdict)

    # ---- forwarding

    def _target(self, provider: Provider, request: Request, path: str) -> str:
        query = request.url.query
        return provider.url(path) + (f"?{query}" if query else "")

    async def _pass(self, provider: Provider, request: Request, path: str, body: bytes) -> Response:
        """A free path (model lists, token counting): passed through, unbilled."""
        client = self.pools.client(provider.name)
        headers = forward_headers(request.headers.items(), provider)
        try:
            async with client.request(
                request.method, self._target(provider, request, path), data=body, headers=headers, allow_redirects=False
            ) as resp:
                content = await resp.read()
        except UpstreamError as exc:
            raise _unreachable(provider, exc) from None
        return Response(content, status_code=resp.status, headers=answer_headers(resp.headers))

    async def _forward(
        self, provider: Provider, request: Request, path: str, call: Call, admitted: Admitted
    ) -> Response:
        client = self.pools.client(provider.name)
        headers = forward_headers(request.headers.items(), provider)
        facts = CallFacts(
            provider=provider.name,
            requested_model=call.model,
            priced_model=admitted.priced_model,
            api_key_id=admitted.principal.key_id,
            streamed=call.stream,
            request_id=CallFacts.new_request_id(),
        )
        try:
            resp = await client.request(
                request.method,
                self._target(provider, request, path),
                data=call.content,
                headers=headers,
                allow_redirects=False,
            )
        except UpstreamError as exc:
            raise _unreachable(provider, exc) from None
        ok = 200 <= resp.status < 300
        if ok and call.stream and resp.headers.get("content-type", "").startswith("text/event-stream"):

            async def bill(usage: LlmUsage, disconnected: bool) -> None:
                await self._bill(admitted.scope, facts, usage, disconnected)

            relay = Relay(
                resp,
                call.wire,
                drop_usage_chunk=call.drop_usage_chunk,
                bill=bill,
                drain_seconds=self.settings.llm_drain_seconds,
            )
            return MeteredStream(relay, resp.status, answer_headers(resp.headers))
        try:
            content = await resp.read()
        except UpstreamError as exc:
            resp.close()
            raise _unreachable(provider, exc) from None
        resp.release()
        if ok:  # an error answer is passed back as it is, and costs nothing
            self._bill_later(admitted.scope, facts, _usage_of(call.wire, content))
        return Response(content, status_code=resp.status, headers=answer_headers(resp.headers))

    async def _bill(self, scope: TenantScope, facts: CallFacts, usage: LlmUsage, disconnected: bool) -> Charged | None:
        """Hands the finished call to the biller (app/llmproxy/biller.py) and waits for its bill."""
        if not usage.any:
            return None
        if facts.priced_model is None and usage.cost_usd is None:
            # OpenRouter without usage.cost: the price table, when the model it reports resolves.
            try:
                names = await self.uow.call(self.known.names)
                priced = resolve(usage.model or facts.requested_model or "", names, self.settings.llm_model_aliases)
            except UnknownModel:
                log.error("LLM call not billed: no usage.cost and no price for model %r", usage.model)
                return None
            facts = replace(facts, priced_model=priced)
        return await self.biller.submit(Finished(scope, facts, usage, disconnected))

    def _bill_later(self, scope: TenantScope, facts: CallFacts, usage: LlmUsage) -> None:
        """A non-streamed answer goes back at once; its bill follows, off this request's path (the
        caller's keep-alive connection is free for its next call)."""
        task = asyncio.get_running_loop().create_task(self._bill(scope, facts, usage, False))
        self._billing.add(task)
        task.add_done_callback(self._billing.discard)


def _usage_of(flavor: str, content: bytes) -> LlmUsage:
    try:
        body = json.loads(content, parse_float=Decimal)
    except ValueError:
        return LlmUsage()
    if flavor == "anthropic":
        return anthropic_message(LlmUsage(), body)
    if flavor == "responses":
        return responses_apply(LlmUsage(), body)
    return openai_apply(LlmUsage(), body)


def _refusal(verdict: CheckResult) -> Refusal:
    reason = verdict.reason or "FORBIDDEN"
    if reason == "INSUFFICIENT_CREDITS":
        return Refusal(
            reason,
            "insufficient credits: the balance is at or below the threshold for new LLM calls; buy a credit pack",
            {
                "available": credits(verdict.available),
                "shortfall": credits(verdict.shortfall or 0),
                "packs": pack_offers(verdict.packs),
            },
        )
    return Refusal(reason, verdict.message or reason.lower(), {"primitive": verdict.primitive})


def _unreachable(provider: Provider, exc: Exception) -> Refusal:
    # The exception's type only: its text can carry the upstream URL.
    log.warning("upstream %s unreachable: %s", provider.name, type(exc).__name__)
    return Refusal("UPSTREAM_UNAVAILABLE", f"the {provider.name} upstream did not answer ({type(exc).__name__})")


def routes(state: Any) -> list[Route]:
    proxy = state.llm_proxy = Proxy(state)
    methods = ["GET", "POST"]
    return [
        Route("/v1/llm/chat/completions", proxy.chat, methods=["POST"]),
        Route("/v1/proxy/{provider:str}/{path:path}", proxy.proxied, methods=methods),
    ]
