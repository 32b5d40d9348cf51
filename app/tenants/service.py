from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from app.core.auth import Principal, TenantScope, generate_key, hash_key
from app.core.clock import Clock
from app.core.errors import NotFound, ValidationFailed
from app.core.ids import new_id
from app.core.validation import check_name, check_optional
from app.credits import ledger
from app.live import notify as live
from app.plans.repository import PlanRepository
from app.tenants.models import ApiKey, Tenant
from app.tenants.principals import CACHE as PRINCIPALS
from app.tenants.repository import ApiKeyRepository, TenantRepository

MAX_METADATA_BYTES = 8 * 1024
MAX_METADATA_DEPTH = 16
MAX_PAGE = 200


@dataclass
class TenantInput:
    name: str
    external_id: str | None = None
    metadata: dict[str, Any] | None = None


def create_tenant(
    session: Session, clock: Clock, data: TenantInput, *, default_plan_key: str, signup_micro: int
) -> Tenant:
    """The brief's users.create: a tenant on the default plan, with its signup credits."""
    name = check_name(data.name)
    external_id = check_optional(data.external_id, field="externalId")
    meta = data.metadata or {}
    if not isinstance(meta, dict):
        raise ValidationFailed("metadata must be an object", field="metadata")
    if _depth(meta) > MAX_METADATA_DEPTH:
        raise ValidationFailed(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels", field="metadata")
    if len(json.dumps(meta, separators=(",", ":"))) > MAX_METADATA_BYTES:
        raise ValidationFailed(f"metadata is larger than {MAX_METADATA_BYTES} bytes", field="metadata")
    repo = TenantRepository(session)
    if external_id is not None and repo.by_external_id(external_id) is not None:
        raise ValidationFailed("externalId is already used by another tenant", field="externalId")
    default = PlanRepository(session).get(default_plan_key)
    tenant = Tenant(
        id=new_id("ten"),
        name=name,
        external_id=external_id,
        meta=meta,
        plan_key=default.key if default and not default.archived else None,
        created_at=clock.now(),
    )
    repo.add(tenant)
    scope = TenantScope(tenant.id)
    ledger.open_account(session, scope, clock)
    if signup_micro > 0:
        ledger.grant(session, scope, clock, amount=signup_micro, source="signup", grant_key="signup")
    return tenant


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (a hostile value must not blow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_METADATA_DEPTH:
            break
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def encode_cursor(tenant: Tenant) -> str:
    return base64.urlsafe_b64encode(f"{tenant.created_at.isoformat()}|{tenant.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, tid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(at), tid
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed("after is not a valid cursor", field="after") from None


def list_tenants(session: Session, first: int, after: str | None) -> tuple[list[Tenant], bool]:
    if first < 1 or first > MAX_PAGE:
        raise ValidationFailed(f"first must be between 1 and {MAX_PAGE}", field="first")
    rows = TenantRepository(session).page(first + 1, decode_cursor(after) if after is not None else None)
    return rows[:first], len(rows) > first


def create_api_key(
    session: Session, clock: Clock, *, role: str, scope: TenantScope | None, name: str
) -> tuple[ApiKey, str]:
    """Returns the stored key and the raw secret, which is shown this once and never again."""
    name = check_optional(name or None, field="name", max_len=200) or ""
    if role == "tenant" and (scope is None or not TenantRepository(session).exists(scope.tenant_id)):
        raise NotFound("Tenant", scope.tenant_id if scope else "")
    raw = generate_key("operator" if role == "operator" else "tenant")
    key = ApiKey(
        id=new_id("key"),
        kind=role,
        tenant_id=scope.tenant_id if role == "tenant" and scope else None,
        name=name,
        key_hash=hash_key(raw),
        prefix=raw[:10],
        created_at=clock.now(),
    )
    ApiKeyRepository(session).add(key)
    return key, raw


def revoke_api_key(session: Session, clock: Clock, principal: Principal, key_id: str) -> ApiKey:
    repo = ApiKeyRepository(session)
    key = repo.get(key_id)
    # A tenant can only revoke its own keys; anything else looks like a missing key.
    if key is None or (principal.role == "tenant" and key.tenant_id != principal.tenant_id):
        raise NotFound("ApiKey", key_id)
    if key.revoked_at is None:
        key.revoked_at = clock.now()
        repo.add(key)
        # Live connections opened with this key close at commit, in every process (app/live).
        live.publish(session.connection(), live.key_revoked(key.id))
    PRINCIPALS.forget_key(key.id)
    return key


def authenticate(session: Session, raw: str) -> Principal | None:
    key = ApiKeyRepository(session).by_hash(hash_key(raw))
    if key is None or key.revoked_at is not None:
        return None
    return Principal(role="operator" if key.kind == "operator" else "tenant", key_id=key.id, tenant_id=key.tenant_id)


def ensure_operator_key(session: Session, clock: Clock, configured: str | None) -> str | None:
    """First start: store the configured operator key, or make one. Returns a new raw key to print."""
    repo = ApiKeyRepository(session)
    if configured:
        if repo.by_hash(hash_key(configured)) is None:
            repo.add(
                ApiKey(
                    id=new_id("key"),
                    kind="operator",
                    name="configured",
                    key_hash=hash_key(configured),
                    prefix=configured[:10],
                    created_at=clock.now(),
                )
            )
        return None
    if repo.any_operator():
        return None
    _, raw = create_api_key(session, clock, role="operator", scope=None, name="bootstrap")
    return raw
