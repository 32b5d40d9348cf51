"""The upstreams: each provider's base URL, key and wire flavor, which of its paths are billed,
passed through free or refused, and ONE shared aiohttp connection pool per upstream (made on first
use in the serving event loop, closed with the app).

Headers: the caller's meterkit credentials (Authorization, x-api-key, X-Tenant-Id), cookies,
hop-by-hop headers and the caller's own provider organization/project are never forwarded; the
provider key is set by the proxy (Bearer for OpenRouter and OpenAI, x-api-key for Anthropic) and
never appears in an answer or a log line. Upstream answers are asked uncompressed
(accept-encoding: identity) so streams can be read as they pass.

The client is aiohttp's, not httpx's: per call it spends a quarter of httpx's CPU (122 vs 500 us
against the same local upstream, uvloop; bench/proxy.py has the proxy-level figures), and that
CPU is the proxy's added latency and its throughput ceiling."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from app.settings import Settings

_REQUEST_DROP = frozenset(
    {
        "host",
        "authorization",
        "x-api-key",
        "x-tenant-id",
        "content-length",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "cookie",
        "accept-encoding",
        "openai-organization",
        "openai-project",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
    }
)
_RESPONSE_DROP = frozenset(
    {
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "set-cookie",
        "server",
        "date",
        "trailer",
        "upgrade",
    }
)


@dataclass(frozen=True)
class Provider:
    name: str  # openrouter | openai | anthropic
    flavor: str  # openai | anthropic: the wire format of usage and errors
    base_url: str
    api_key: str | None
    billable: tuple[tuple[str, str], ...]  # (method, path) billed per call
    free: tuple[tuple[str, re.Pattern[str]], ...]  # (method, path pattern) passed through unbilled

    def classify(self, method: str, path: str) -> str:
        """billable, free or refused (anything not listed: never an unbilled generation)."""
        path = path.strip("/")
        if (method, path) in self.billable:
            return "billable"
        if any(m == method and p.fullmatch(path) for m, p in self.free):
            return "free"
        return "refused"

    def wire(self, path: str) -> str:
        """How a path's answers carry usage: anthropic, openai (chat completions) or responses."""
        return "responses" if self.flavor == "openai" and path.strip("/") == "responses" else self.flavor

    def url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}/{path.lstrip('/')}"

    def auth_headers(self) -> list[tuple[str, str]]:
        assert self.api_key is not None
        if self.flavor == "anthropic":
            return [("x-api-key", self.api_key)]
        return [("authorization", f"Bearer {self.api_key}")]


def providers(settings: Settings) -> dict[str, Provider]:
    models = re.compile(r"models(/.*)?")
    return {
        "openrouter": Provider(
            "openrouter",
            "openai",
            settings.openrouter_base_url,
            settings.openrouter_api_key,
            billable=(("POST", "chat/completions"), ("POST", "completions")),
            free=(("GET", models), ("GET", re.compile(r"providers"))),
        ),
        "openai": Provider(
            "openai",
            "openai",
            settings.openai_base_url,
            settings.openai_api_key,
            billable=(("POST", "chat/completions"), ("POST", "responses")),
            free=(("GET", models),),
        ),
        "anthropic": Provider(
            "anthropic",
            "anthropic",
            settings.anthropic_base_url,
            settings.anthropic_api_key,
            billable=(("POST", "v1/messages"),),
            free=(("GET", re.compile(r"v1/models(/.*)?")), ("POST", re.compile(r"v1/messages/count_tokens"))),
        ),
    }


def forward_headers(headers: Iterable[tuple[str, str]], provider: Provider) -> list[tuple[str, str]]:
    out = [(k, v) for k, v in headers if k.lower() not in _REQUEST_DROP]
    out.append(("accept-encoding", "identity"))
    out.extend(provider.auth_headers())
    return out


def answer_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _RESPONSE_DROP}


# What an upstream call can fail with: the connection (refused, reset, closed mid-answer), a timeout.
UpstreamError = (aiohttp.ClientError, TimeoutError, OSError)


class Pools:
    """One aiohttp.ClientSession (its connection pool) per upstream, for the life of the app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[str, aiohttp.ClientSession] = {}

    def client(self, name: str) -> aiohttp.ClientSession:
        client = self._clients.get(name)
        if client is None:
            s = self.settings
            client = self._clients[name] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=s.llm_pool_size, limit_per_host=0),
                # No bound on the whole call (a long stream is fine); one on connecting and on each read.
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=s.llm_connect_timeout_seconds, sock_read=s.llm_read_timeout_seconds
                ),
                trust_env=False,  # the upstream URL is the setting's, never a proxy from the environment
                cookie_jar=aiohttp.DummyCookieJar(),  # a caller's call never carries another's cookies
                auto_decompress=False,  # asked uncompressed; what comes is passed on as it is
                skip_auto_headers=("User-Agent",),
            )
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
