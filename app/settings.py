"""One Settings object; every knob is an environment variable prefixed METERKIT_."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERKIT_", extra="ignore")

    env: Literal["development", "production", "test"] = "development"
    database_url: str = "sqlite:///./meterkit.db"
    operator_key: str | None = None
    # SQLite: run transactions on the event loop instead of worker threads (see app/core/db.py).
    sqlite_inline: bool = True
    # SQLite: copy the WAL into the database file on a background thread this often (seconds);
    # 0 leaves every checkpoint to the commit that fills the WAL (app/core/db.py SqliteCheckpointer).
    sqlite_checkpoint_seconds: Annotated[float, Field(ge=0, le=60)] = 0.1
    # Verified API keys are remembered this long in each process (0 = look every key up).
    auth_cache_seconds: float = 2.0
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000

    # Browser origins allowed to call the API (CORS), comma-separated, e.g.
    # "https://dash.example.com,http://localhost:5173"; none by default ("*": any origin, fine
    # since keys travel in the Authorization header, never in cookies).
    cors_origins: Annotated[list[str], NoDecode] = []

    # GraphQL guards
    max_body_bytes: int = 256 * 1024
    max_query_depth: int = 12
    max_aliases: int = 30
    max_tokens: int = 4000
    # Cost after fragment expansion, measured before validation (app/graphql/cost.py; README "Security").
    # Spreads: graphql-core's overlap check compares the spread fragments pairwise (100: ~25 ms).
    max_fields: Annotated[int, Field(ge=1)] = 2000
    max_fragment_spreads: Annotated[int, Field(ge=1)] = 100
    max_duplicate_fields: Annotated[int, Field(ge=1)] = 30
    max_nesting: Annotated[int, Field(ge=1)] = 30
    max_directives: Annotated[int, Field(ge=1)] = 50
    max_variables: Annotated[int, Field(ge=1)] = 100
    max_list_items: Annotated[int, Field(ge=1)] = 1000
    # CPU time one request may spend parsing and validating its document.
    graphql_cpu_budget_ms: Annotated[float, Field(gt=0)] = 250.0
    # `meterkit serve`: on SIGTERM, in-flight requests get this many seconds, then are dropped
    # (0: dropped at once).
    shutdown_grace_seconds: Annotated[int, Field(ge=0)] = 10

    # Credits (values in whole credits; stored as micro-credits)
    signup_grant_credits: int = 20
    negative_buffer_credits: int = 10
    # The hold TTL when reserve omits ttlSeconds; the same bounds as ttlSeconds (1 s to 7 days).
    hold_ttl_seconds: Annotated[int, Field(ge=1, le=7 * 86400)] = 3600
    credit_value_usd: str = "0.50"

    # Stripe
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    # The platform's Stripe Connect webhook endpoint (/webhooks/stripe/connect): its own signing
    # secret, since Stripe signs Connect events with the Connect endpoint's secret.
    stripe_connect_webhook_secret: str | None = None
    # Server keys (Fernet, urlsafe base64 of 32 bytes; comma-separated, newest first) that encrypt the
    # organizations' Stripe secrets at rest (docs/organization-stripe.md). The first encrypts, all
    # decrypt; `meterkit stripe rotate-secrets` re-encrypts under the first. Required in production.
    secrets_keys: Annotated[list[str], NoDecode, Field(repr=False)] = []
    # Where browsers reach this gateway (Stripe Checkout's return pages). Unset: the address it
    # serves on (`meterkit serve --host/--port`, else METERKIT_HOST/METERKIT_PORT), see public_base_url.
    public_url: str | None = None
    default_plan_key: str = "free"

    # Alerts: how often the in-process webhook worker looks for due deliveries (0: no worker here)
    webhook_worker_seconds: float = 1.0

    # ---- edge (issue 17): limits of the one HTTP edge and the GraphQL document prescan ----
    # Operation definitions one GraphQL document may hold, counted on its text before parsing
    # (app/graphql/cost.py prescan; aliases are counted there too, against max_aliases).
    max_operations: Annotated[int, Field(ge=1)] = 10
    # Requests one API key may have in flight in this process (app/http/edge.py InFlightLimit);
    # the next is refused with 429 TOO_MANY_REQUESTS and Retry-After. 0: no limit.
    max_in_flight_per_key: Annotated[int, Field(ge=0)] = 32

    # ---- Database pool under pressure (issue 17, area pg; app/core/db.py engine_for) ----
    # Connections each process keeps open, and opens beyond them under load; unset: PostgreSQL
    # 20 + 20, SQLite 40 + 20. Keep (pool + overflow) x processes under the server's max_connections.
    db_pool_size: Annotated[int, Field(ge=1)] | None = None
    db_max_overflow: Annotated[int, Field(ge=0)] | None = None
    # How long a request waits for a free connection; then 503 DATABASE_UNAVAILABLE + Retry-After.
    db_pool_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    # database_url goes through PgBouncer in transaction pooling mode: no server-side prepared
    # statements; what needs a session of its own (LISTEN for live updates, the migrations'
    # advisory lock) uses db_session_url instead (PostgreSQL itself, or a session-mode pool):
    # through transaction pooling a LISTEN hears nothing and a session lock can leak.
    db_pgbouncer: bool = False
    db_session_url: str | None = None

    # Alert delivery (issue 17, area alerts; README "Security"). Webhook endpoints on private,
    # loopback, link-local, unique-local, multicast, reserved or metadata addresses are refused
    # unless this is set (local development and tests with a local receiver).
    webhook_allow_private: bool = False
    # Wall-clock deadline of one delivery (resolve, connect, send, status line and headers).
    webhook_deadline_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    # Deliveries in flight at once in one worker, and at most this many to one endpoint.
    webhook_concurrency: Annotated[int, Field(ge=1, le=1000)] = 16
    webhook_per_endpoint: Annotated[int, Field(ge=1, le=100)] = 2
    # A claimed delivery is leased this long; more than the deadline, so a live worker's POST ends
    # before another worker may claim it again.
    webhook_lease_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # The worker expires holds past their expiry this often (0: only the tenant's next write does).
    hold_sweep_seconds: Annotated[float, Field(ge=0, le=3600)] = 30.0

    # ---- live updates and the websocket edge (issue 17, area "live"; README "Security") ----
    # Per gateway process: websockets and subscriptions one key / one tenant may hold at once;
    # past them a socket is closed with 4429 and a subscribe answers an `error` (TOO_MANY_SUBSCRIPTIONS).
    max_sockets_per_key: Annotated[int, Field(ge=1)] = 32
    max_sockets_per_tenant: Annotated[int, Field(ge=1)] = 128
    max_subscriptions_per_socket: Annotated[int, Field(ge=1)] = 100
    max_subscriptions_per_key: Annotated[int, Field(ge=1)] = 2000
    max_subscriptions_per_tenant: Annotated[int, Field(ge=1)] = 4000
    # permessage-deflate on websockets (`meterkit serve`). Off: live answers are a few hundred
    # bytes, and compressing each one for each socket cost the event loop more than sending it.
    ws_compression: bool = False
    # The GraphQL parse cache keeps documents up to this many bytes in all (an estimate of the
    # text and its syntax tree), least recently used out first (app/graphql/parse_cache.py).
    parse_cache_bytes: Annotated[int, Field(ge=0)] = 16 * 1024 * 1024

    # ---- the LLM proxy (issue 21; docs/llm-proxy.md) ----
    # Upstreams: base URLs (the SDK's base_url for that provider) and the provider keys the proxy
    # sends; a route whose key is unset answers 503. The keys are never returned nor logged.
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    openrouter_api_key: str | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str | None = None
    anthropic_base_url: str = "https://api.anthropic.com"
    anthropic_api_key: str | None = None
    # Operator aliases on top of the built-in ones: a JSON object, provider spelling -> price-table
    # model, e.g. '{"my-finetune": "gpt-4o-mini"}' (app/llm/aliases.py).
    llm_model_aliases: dict[str, str] = {}
    # Upstream timeouts: connect, and between two reads of a response (a stream may run longer).
    llm_connect_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    llm_read_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 600.0
    # A client gone mid-stream: the upstream is still read this long to learn the usage it reports.
    llm_drain_seconds: Annotated[float, Field(ge=0, le=3600)] = 120.0
    # Connections kept to each upstream (one shared pool per upstream and process).
    llm_pool_size: Annotated[int, Field(ge=1, le=10_000)] = 200
    # Request bodies on the proxy routes (prompts are larger than API calls): this many bytes at most.
    llm_max_body_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024

    # ---- observability (issue 23; docs/operations.md) ----
    # /metrics (Prometheus text format) on the app's own port, readable with a platform (operator)
    # key only; off by default. Counting itself is always on (counters in memory, no I/O).
    metrics_enabled: bool = False
    # Scrape-time database gauges (outbox, holds, overage) are read at most this often per process.
    metrics_db_cache_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0
    # The ledger reconcile behind meterkit_ledger_drift_tenants runs from a scrape at most this
    # often (it reads the whole ledger); 0: only when an operator runs the `reconcile` query.
    metrics_reconcile_seconds: Annotated[float, Field(ge=0)] = 900.0
    # Log records as JSON lines (json), readable lines (text), or json in production and text
    # elsewhere (auto). One access line per request at INFO unless access_log is off.
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = True
    # OpenTelemetry traces (pip install 'meterkit[otel]'): exported over OTLP/HTTP to this URL
    # (e.g. http://otel-collector:4318/v1/traces); unset: no tracing.
    otel_endpoint: str | None = None
    otel_service_name: str = "meterkit"

    @property
    def public_base_url(self) -> str:
        """METERKIT_PUBLIC_URL, else this gateway's own address (a wildcard bind as loopback)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{local_host(self.host)}:{self.port}"

    @property
    def session_database_url(self) -> str:
        """Where a session-level feature connects: db_session_url, else database_url."""
        return self.db_session_url or self.database_url

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("secrets_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @property
    def graphiql_enabled(self) -> bool:
        return self.env != "production"

    @model_validator(mode="after")
    def _lease_outlives_deadline(self) -> Settings:
        if self.webhook_lease_seconds <= self.webhook_deadline_seconds:
            raise ValueError("METERKIT_WEBHOOK_LEASE_SECONDS must be more than METERKIT_WEBHOOK_DEADLINE_SECONDS")
        return self


def local_host(host: str) -> str:
    """An address a process on this machine can reach a server bound to `host` at."""
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@lru_cache
def get_settings() -> Settings:
    return Settings()
