"""Comparing error shapes whole, now that every error names its request (issue 23): a REST error
body's `error.request_id` and a GraphQL error's `extensions.requestId`, the X-Request-Id of the
response. The shape tests compare the rest with `==`; that the id is there, and is the header's,
is asserted once per kind of error in tests/observability/test_logs_and_probes.py."""

from __future__ import annotations

from typing import Any

REQUEST_ID_KEYS = ("request_id", "requestId")


def without_request_id(error: dict[str, Any]) -> dict[str, Any]:
    """`error` (a REST body's "error", or a GraphQL error's "extensions") without its request id."""
    return {k: v for k, v in error.items() if k not in REQUEST_ID_KEYS}


def body_without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    """A whole response body with the request id left out of its error(s), REST or GraphQL."""
    out = dict(body)
    if isinstance(out.get("error"), dict):
        out["error"] = without_request_id(out["error"])
    if isinstance(out.get("errors"), list):
        out["errors"] = [
            {**e, "extensions": without_request_id(e["extensions"])} if isinstance(e.get("extensions"), dict) else e
            for e in out["errors"]
        ]
    return out
