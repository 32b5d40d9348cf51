from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from app.core.auth import (
    ALL_SCOPES,
    Principal,
    Scope,
    TenantScope,
    format_scopes,
    generate_key,
    hash_key,
    parse_scopes,
)
from app.core.clock import Clock, as_utc
from app.core.errors import NotFound, ValidationFailed
from app.core.ids import new_id
from app.core.paging import check_first
from app.core.paging import decode_cursor as decode_cursor_of
from app.core.paging import encode_cursor as encode_cursor_of
from app.core.validation import check_name, check_optional
from app.credits import ledger
from app.live import notify as live
from app.organizations.models import DEFAULT_ORG_ID, END_USER, Organization
from app.plans.repository import PlanRepository
from app.tenants.models import ApiKey, Tenant
from app.tenants.principals import CACHE as PRINCIPALS
from app.tenants.repository import ApiKeyRepository, TenantRepository

MAX_METADATA_BYTES = 8 * 1024


def acting_org(principal: Principal | None) -> str:
    """The organization a key acts for: its own; a platform key (or none: a script) the default one."""
    if principal is not None and principal.organization_id is not None:
        return principal.organization_id
    return DEFAULT_ORG_ID


def may_act_on(principal: Principal, tenant: Tenant) -> bool:
    """Platform keys act on every tenant; an organization on its end users; an end user on itself."""
    if principal.role == "operator":
        return True
    if principal.role == "organization":
        return tenant.organization_id == principal.organization_id and tenant.kind == END_USER
    return tenant.id == principal.tenant_id


MAX_METADATA_DEPTH = 16


@dataclass
class TenantInput:
    name: str
    external_id: str | None = None
    metadata: dict[str, Any] | None = None


def create_tenant(
    session: Session,
    clock: Clock,
    data: TenantInput,
    *,
    default_plan_key: str,
    signup_micro: int,
    organization_id: str = DEFAULT_ORG_ID,
) -> Tenant:
    """Creates an end user of the organization, on the default plan when the organization has a plan of
    that key, with signup credits when the organization gives its end users wallets (else the end user
    holds no credits at all: its organization pays for its calls)."""
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
    if external_id is not None and repo.by_external_id(organization_id, external_id) is not None:
        raise ValidationFailed("externalId is already used by another tenant", field="externalId")
    org = session.get(Organization, organization_id)
    if org is None:
        raise NotFound("Organization", organization_id)
    default = PlanRepository(session).get(organization_id, default_plan_key)
    tenant = Tenant(
        id=new_id("ten"),
        name=name,
        external_id=external_id,
        meta=meta,
        plan_key=default.key if default and not default.archived else None,
        created_at=clock.now(),
        organization_id=organization_id,
        kind=END_USER,
    )
    repo.add(tenant)
    scope = TenantScope(tenant.id)
    # The account row exists whatever the mode: the charge locks it (end-user rows first).
    ledger.open_account(session, scope, clock)
    if signup_micro > 0 and org.end_user_wallets:
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
    return encode_cursor_of("ten", f"{tenant.created_at.isoformat()}|{tenant.id}")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    at, _, tid = decode_cursor_of("ten", cursor).partition("|")
    try:
        return datetime.fromisoformat(at), tid
    except ValueError:
        raise ValidationFailed("after is not a valid cursor", field="after") from None


MAX_SEARCH = 200


def list_tenants(
    session: Session, first: int, after: str | None, search: str | None = None, organization_id: str | None = None
) -> list[Tenant]:
    """A page of tenants, oldest first, with one row more than asked (it says a next page exists).
    `search` matches part of the name, external id or plan key, case-insensitively."""
    check_first(first)
    if search is not None and len(search) > MAX_SEARCH:
        raise ValidationFailed(f"search is longer than {MAX_SEARCH} characters", field="search")
    cursor = decode_cursor(after) if after is not None else None
    return TenantRepository(session).page(first + 1, cursor, (search or "").strip() or None, organization_id)


def create_api_key(
    session: Session,
    clock: Clock,
    *,
    role: str,
    scope: TenantScope | None,
    name: str,
    scopes: Iterable[str] | None = None,
    expires_at: datetime | None = None,
    caller: Principal | None = None,
) -> tuple[ApiKey, str]:
    """Returns the stored key and the raw secret, which is shown this once and never again.
    A key minted by another key gets no scope and no lifetime its maker lacks: a read-only or
    expiring key cannot mint a key that outlives or outranks it."""
    name = check_optional(name or None, field="name", max_len=200) or ""
    granted = _check_scopes(scopes, caller)
    expires_at = _check_expiry(expires_at, clock, caller)
    organization_id = None
    if role == "tenant":
        tenant = TenantRepository(session).get(scope) if scope is not None else None
        # An organization mints keys for its own end users only; anything else looks missing.
        if tenant is None or (caller is not None and not may_act_on(caller, tenant)):
            raise NotFound("Tenant", scope.tenant_id if scope else "")
        organization_id = tenant.organization_id
    elif role == "organization":
        organization_id = caller.organization_id if caller is not None else None
        if scope is not None:
            organization_id = scope.tenant_id  # the organization's house tenant id is its id
        if organization_id is None:
            raise NotFound("Organization", "")
    raw = generate_key("operator" if role == "operator" else "organization" if role == "organization" else "tenant")
    key = ApiKey(
        id=new_id("key"),
        kind=role,
        tenant_id=scope.tenant_id if role == "tenant" and scope else None,
        organization_id=organization_id,
        name=name,
        key_hash=hash_key(raw),
        prefix=raw[:10],
        created_at=clock.now(),
        scopes=format_scopes(granted),
        expires_at=expires_at,
    )
    ApiKeyRepository(session).add(key)
    return key, raw


def _check_scopes(scopes: Iterable[str] | None, caller: Principal | None) -> frozenset[Scope]:
    if scopes is None:
        return caller.scopes if caller is not None else ALL_SCOPES
    wanted = list(scopes)
    granted = parse_scopes(wanted)
    if not wanted or len(granted) != len(set(wanted)):
        raise ValidationFailed("scopes must be one or more of read, meter, manage", field="scopes")
    if caller is not None and not granted <= caller.scopes:
        extra = ", ".join(sorted(granted - caller.scopes))
        raise ValidationFailed(f"a key cannot grant scopes it lacks ({extra})", field="scopes")
    return granted


def _check_expiry(expires_at: datetime | None, clock: Clock, caller: Principal | None) -> datetime | None:
    now = clock.now()
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise ValidationFailed("expiresAt needs a time zone (e.g. 2026-12-31T00:00:00Z)", field="expiresAt")
        if expires_at <= now:
            raise ValidationFailed("expiresAt must be in the future", field="expiresAt")
    if caller is not None and caller.expires_at is not None:
        if expires_at is None:
            return caller.expires_at  # an expiring key mints keys that expire with it
        if expires_at > caller.expires_at:
            raise ValidationFailed("expiresAt cannot be later than the expiry of the key minting it", field="expiresAt")
    return expires_at


def revoke_api_key(session: Session, clock: Clock, principal: Principal, key_id: str) -> ApiKey:
    repo = ApiKeyRepository(session)
    key = repo.get(key_id)
    # A tenant can only revoke its own keys, an organization its own and its end users'; anything
    # else looks like a missing key.
    if (
        key is None
        or (principal.role == "tenant" and key.tenant_id != principal.tenant_id)
        or (principal.role == "organization" and key.organization_id != principal.organization_id)
    ):
        raise NotFound("ApiKey", key_id)
    if key.revoked_at is None:
        key.revoked_at = clock.now()
        repo.add(key)
        # Live connections opened with this key close at commit, in every process (app/live).
        live.publish(session.connection(), live.key_revoked(key.id))
    PRINCIPALS.forget_key(key.id)
    return key


def authenticate(session: Session, raw: str, now: datetime | None = None) -> Principal | None:
    """The principal behind a raw key; None for an unknown, revoked or (at `now`) expired key."""
    key = ApiKeyRepository(session).by_hash(hash_key(raw))
    if key is None or key.revoked_at is not None:
        return None
    principal = Principal(
        role="operator" if key.kind == "operator" else "organization" if key.kind == "organization" else "tenant",
        key_id=key.id,
        tenant_id=key.tenant_id,
        scopes=parse_scopes(key.scopes),
        expires_at=as_utc(key.expires_at) if key.expires_at is not None else None,
        organization_id=key.organization_id,
    )
    if now is not None and principal.expired(now):
        return None
    return principal


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


class PeriodBeforeTenant(ValidationFailed):
    """A usage read for a period that ended before the tenant was created: there is no plan,
    quota or counter of it to report, and today's would be an answer to another question."""

    code = "PERIOD_BEFORE_TENANT"

    def __init__(self, label: str, created_at: datetime) -> None:
        super().__init__(
            f"period {label} ended before the tenant was created ({created_at.date().isoformat()}): "
            f"the first period with usage is {created_at.strftime('%Y-%m')}",
            field="period",
        )


def check_existed_by(tenant: Tenant, period_end: datetime, label: str) -> None:
    """Refuse a period [.., period_end) that lies wholly before the tenant's creation."""
    created = as_utc(tenant.created_at)
    if as_utc(period_end) <= created:
        raise PeriodBeforeTenant(label, created)
