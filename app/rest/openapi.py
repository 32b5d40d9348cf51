"""GET /openapi.json: the OpenAPI 3.1 document of every /v1 route, generated from the same
pydantic models that parse the requests and shape the answers (pydantic's own JSON Schema
generator; the route table supplies methods, paths, the key scope each needs and the errors)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field
from pydantic.json_schema import models_json_schema

from app.rest.base import Endpoint, Money, Out
from app.rest.billing import Purchase

REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"{(\w+)}")
ID_PATTERNS = {"hold_id": "^hold_[0-9a-f]{32}$"}


class ErrorDetail(Out):
    model_config = ConfigDict(extra="allow")

    code: str = Field(
        description="Machine-readable, lower case: validation_failed, unauthenticated, not_found, ... "
        "(GraphQL spells the same codes in UPPER_CASE)"
    )
    message: str
    field: str | None = Field(None, description="The request field at fault (dotted path), when there is one")


class Error(Out):
    """The one error shape of the HTTP edge. Some codes add details next to code and message."""

    error: ErrorDetail


class PackOffer(Out):
    key: str
    name: str
    credits: Money
    price_usd: Money
    purchase: Purchase
    quantity: int = Field(
        description="1 for a pack that covers the shortfall alone; in a combination (no pack covers it alone) "
        "how many times to buy it"
    )


class InsufficientDetail(Out):
    code: Literal["insufficient_credits"]
    message: str
    required: Money
    available: Money
    shortfall: Money
    packs: list[PackOffer] = Field(
        description="Each pack that covers the shortfall alone, cheapest first; if none does, the cheapest "
        "combination that covers it together (quantity: how many of each)"
    )


class InsufficientCredits(Out):
    """402 insufficient_credits, with the packs that would cover it."""

    error: InsufficientDetail


ERRORS = {
    400: "Invalid request: a field has the wrong type or value (named in `field`), or the body is not JSON",
    401: "Missing, malformed, revoked or unknown key",
    402: "Insufficient credits",
    403: "Not entitled (the tenant's Account Kit), or the key lacks the scope the route needs",
    404: "Not found (also a tenant or hold of another tenant)",
    409: "Conflict: idempotency key reused with other parameters, hold already closed, ...",
    413: "The request body is larger than METERKIT_MAX_BODY_BYTES",
    429: "The call does not fit the quota left for the period, or a per-call or per-minute limit "
    "(Retry-After when known)",
    502: "Stripe refused or failed",
    503: "No database connection in time (database_unavailable, with Retry-After: nothing was written, "
    "send it again), or Stripe is not configured",
}


def document(endpoints: list[Endpoint], *, title: str = "meterkit REST", version: str = "1") -> dict[str, Any]:
    models: list[tuple[Any, Any]] = [(Error, "serialization"), (InsufficientCredits, "serialization")]
    for ep in endpoints:
        models.append((ep.ok, "serialization"))
        if ep.body is not None:
            models.append((ep.body, "validation"))
    keys, top = models_json_schema(models, ref_template=REF)
    paths: dict[str, Any] = {}
    for ep in endpoints:
        op: dict[str, Any] = {
            "operationId": "_".join(re.findall(r"\w+", f"{ep.method.lower()} {ep.path}")),
            "summary": ep.summary,
            "x-meterkit-needs": ep.needs,
            "parameters": _parameters(ep),
            "responses": {"200": _json("OK", keys[(ep.ok, "serialization")])},
        }
        if ep.description:
            op["description"] = ep.description
        if ep.body is not None:
            op["requestBody"] = {
                "required": not ep.body_optional,
                "content": {"application/json": {"schema": keys[(ep.body, "validation")]}},
            }
        body_limit = {413} if ep.body is not None else set()
        # 503: any route may find no database connection in time (app/core/db.py connect).
        for status in sorted({400, 401, 403, 404, 503, *body_limit, *ep.refusals}):
            schema = keys[(InsufficientCredits if status == 402 else Error, "serialization")]
            op["responses"][str(status)] = _json(ERRORS[status], schema)
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Metering, credits, pricing and billing of tenants. Every /v1 route needs "
            "`Authorization: Bearer <key>`: a tenant key, or an operator key plus `X-Tenant-Id` for routes "
            "of a tenant. Each operation's `x-meterkit-needs` names the key scope it requires (read, meter, manage).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "mk_tn_... | mk_op_..."}},
        },
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _parameters(ep: Endpoint) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in _PARAM.findall(ep.path):
        schema = {"type": "string", "pattern": ID_PATTERNS[name]} if name in ID_PATTERNS else {"type": "string"}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if ep.query is not None:
        schema = ep.query.model_json_schema(ref_template=REF)
        required = set(schema.get("required", []))
        properties: dict[str, Any] = dict(schema.get("properties") or {})  # type: ignore[arg-type]
        for name, prop in properties.items():
            prop = {k: v for k, v in prop.items() if k != "title"}
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if "description" in prop:
                param["description"] = prop["description"]
            params.append(param)
    if ep.tenant:
        params.append(
            {
                "name": "X-Tenant-Id",
                "in": "header",
                "required": False,
                "description": "With an operator key: the tenant to act for (a tenant key is always its own tenant)",
                "schema": {"type": "string", "pattern": "^ten_[0-9a-f]{32}$"},
            }
        )
    return params
