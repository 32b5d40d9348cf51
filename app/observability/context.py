"""The request being served, as one context variable: set by the middleware (app/observability/
middleware.py), filled in by the edge once the key is known (app/http/edge.py) and by the GraphQL
layer once the operation is (app/graphql/guard.py), and read by the access log line, every other
log record written while serving it, and the error bodies that quote its id.

A context variable, not a scope entry: the units of work run in worker threads (anyio copies the
context into them), and a log record written there still knows its request."""

from __future__ import annotations

import os
import re
from contextvars import ContextVar

# What a client may send as X-Request-Id: a bounded length of characters that need no escaping in
# a header, a log line, a URL or a JSON string. Anything else is replaced by an id of ours (the
# client's value is not echoed, so it can carry nothing into the logs).
MAX_REQUEST_ID = 128
_SAFE_ID = re.compile(rf"[A-Za-z0-9._:\-]{{1,{MAX_REQUEST_ID}}}")


class RequestInfo:
    """What one request's log line says about it, beyond method, status and duration."""

    __slots__ = ("request_id", "key_id", "tenant_id", "operation", "operation_name")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.key_id: str | None = None
        self.tenant_id: str | None = None
        # GraphQL: "mutation charge" (the operation type and its first root field: names from the
        # schema, so a bounded set, fit for a metric label); the client's operation name (logs only).
        self.operation: str | None = None
        self.operation_name: str | None = None


CURRENT: ContextVar[RequestInfo | None] = ContextVar("meterkit_request", default=None)


def request_id_from(header: bytes | None) -> str:
    """The client's X-Request-Id when it is safe to keep, else a new random one (32 hex digits)."""
    if header:
        try:
            text = header.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if _SAFE_ID.fullmatch(text):
            return text
    return os.urandom(16).hex()


def current_request_id() -> str | None:
    info = CURRENT.get()
    return None if info is None else info.request_id


def note_principal(key_id: str | None, tenant_id: str | None) -> None:
    """The key (its id, never the secret) and tenant the edge resolved for this request."""
    info = CURRENT.get()
    if info is not None:
        info.key_id, info.tenant_id = key_id, tenant_id


def note_operation(operation: str | None, name: str | None) -> None:
    info = CURRENT.get()
    if info is not None:
        info.operation = operation
        # The client chose the name: bounded here, and only ever logged (never a label).
        info.operation_name = name[:100] if name else None
