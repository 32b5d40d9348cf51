"""Webhook endpoints: registered by operators (all tenants, or one) and tenants (their own)."""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
import socket
import unicodedata

import httpx
from sqlalchemy import and_
from sqlmodel import Session, col
from sqlmodel import select as sm_select

from app.alerts import egress
from app.alerts.emit import EVENT_TYPES
from app.alerts.models import AlertPolicy, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.core.auth import Principal, TenantScope
from app.core.clock import Clock
from app.core.errors import NotFound, ValidationFailed
from app.core.ids import new_id
from app.organizations.models import DEFAULT_ORG_ID
from app.plans.repository import PlanRepository
from app.tenants.repository import TenantRepository

MAX_URL = 2048
_HOST_NAME = re.compile(r"[a-z0-9_.-]+")  # a host name as the sender sends it (IDNA-encoded, lower case)


def check_url(url: str, *, allow_private: bool) -> str:
    """Refuse a URL the sender could not send to, or must not: parsed by httpx, the parser of the
    client that sends it, so what is stored is what will be sent. No control, format or space
    characters (a newline or NUL once made the sender raise and stopped every delivery), http(s),
    a host name or address, a port in range, and, unless private addresses are allowed, no literal
    non-public address (host names are checked on the address connected to, at each delivery)."""
    if len(url) > MAX_URL:
        raise ValidationFailed(f"url must be at most {MAX_URL} characters", field="url")
    if any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in url):
        raise ValidationFailed("url must not contain control, format or space characters", field="url")
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError, UnicodeError):
        raise ValidationFailed("url is not a valid URL", field="url") from None
    if parsed.scheme not in ("http", "https"):
        raise ValidationFailed("url must be an http or https URL", field="url")
    host = parsed.raw_host.decode("ascii", "replace")
    ip = egress.literal_ip(host) or _legacy_ipv4(host)
    if not host or (ip is None and not _HOST_NAME.fullmatch(host)):
        raise ValidationFailed("url must name a host", field="url")
    if port is not None and not 1 <= port <= 65535:
        raise ValidationFailed("url's port must be between 1 and 65535", field="url")
    if not allow_private and (
        (ip is not None and egress.is_blocked(ip)) or host == "localhost" or host.endswith(".localhost")
    ):
        raise ValidationFailed(
            "url's host is not a public internet address (private, loopback, link-local, metadata or reserved)",
            field="url",
        )
    return url


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """An address in a form only the C resolver reads (2130706433, 0x7f.1): what it will connect to."""
    if not re.fullmatch(r"[0-9a-fx.]+", host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _check(url: str, event_types: list[str], *, allow_private: bool) -> list[str]:
    check_url(url, allow_private=allow_private)
    types = sorted(set(event_types))
    if not types or any(t != "*" and t not in EVENT_TYPES for t in types):
        raise ValidationFailed(f"eventTypes: one or more of {', '.join(EVENT_TYPES)}, or *", field="eventTypes")
    return types


def create_endpoint(
    session: Session,
    clock: Clock,
    principal: Principal,
    tenant_id: str | None,
    url: str,
    event_types: list[str],
    *,
    allow_private: bool = False,
) -> tuple[WebhookEndpoint, str]:
    """The secret is returned this once; it is kept only to sign deliveries."""
    types = _check(url, event_types, allow_private=allow_private)
    tenants = TenantRepository(session)
    org: str | None = None
    if principal.role == "tenant":
        if tenant_id is not None and tenant_id != principal.tenant_id:
            raise NotFound("Tenant", tenant_id)
        tenant_id, org = principal.tenant_id, principal.organization_id
    elif principal.role == "organization":
        # Its own endpoint (every tenant of it), or one of its end users' or its own account's.
        org = principal.organization_id
        assert org is not None
        if tenant_id is not None and tenant_id != org and not tenants.owned_by(tenant_id, org):
            raise NotFound("Tenant", tenant_id)
    elif tenant_id is not None:
        owner = tenants.get(TenantScope(tenant_id))
        if owner is None:
            raise NotFound("Tenant", tenant_id)
        org = owner.organization_id
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    now = clock.now()
    row = WebhookEndpoint(
        id=new_id("whe"),
        tenant_id=tenant_id,
        organization_id=org,
        url=url,
        secret=secret,
        event_types=types,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row, secret


def _visible(session: Session, principal: Principal, endpoint_id: str) -> WebhookEndpoint:
    """Another tenant's or organization's endpoint answers as a missing one does."""
    row = session.get(WebhookEndpoint, endpoint_id)
    if (
        row is None
        or (principal.role == "tenant" and row.tenant_id != principal.tenant_id)
        or (principal.role == "organization" and row.organization_id != principal.organization_id)
    ):
        raise NotFound("WebhookEndpoint", endpoint_id)
    return row


def set_active(session: Session, clock: Clock, principal: Principal, endpoint_id: str, active: bool) -> WebhookEndpoint:
    """Disable, or enable again (after sustained failure): failures start counting from zero."""
    row = _visible(session, principal, endpoint_id)
    row.active = active
    if active:
        row.consecutive_failures = 0
        row.disabled_reason = None
    row.updated_at = clock.now()
    session.add(row)
    session.flush()
    return row


def endpoints(session: Session, principal: Principal) -> list[WebhookEndpoint]:
    q = sm_select(WebhookEndpoint).order_by(col(WebhookEndpoint.created_at), col(WebhookEndpoint.id))
    if principal.role == "tenant":
        q = q.where(WebhookEndpoint.tenant_id == principal.tenant_id)
    elif principal.role == "organization":
        q = q.where(WebhookEndpoint.organization_id == principal.organization_id)
    return list(session.exec(q).all())


def deliveries(
    session: Session, endpoint_id: str, limit: int
) -> tuple[list[WebhookDelivery], dict[int, list[WebhookAttempt]]]:
    """An endpoint's deliveries, newest first, with their attempts: two statements."""
    if not 1 <= limit <= 200:
        raise ValidationFailed("first must be between 1 and 200", field="first")
    if session.get(WebhookEndpoint, endpoint_id) is None:
        raise NotFound("WebhookEndpoint", endpoint_id)
    rows = list(
        session.exec(
            sm_select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(col(WebhookDelivery.id).desc())
            .limit(limit)
        ).all()
    )
    attempts: dict[int, list[WebhookAttempt]] = {}
    if rows:
        ids = [r.id for r in rows]
        for att in session.exec(
            sm_select(WebhookAttempt).where(col(WebhookAttempt.delivery_id).in_(ids)).order_by(col(WebhookAttempt.id))
        ).all():
            attempts.setdefault(att.delivery_id, []).append(att)
    return rows, attempts


def delivery_by_id(session: Session, delivery_id: int) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    row = session.get(WebhookDelivery, delivery_id)
    if row is None:
        raise NotFound("WebhookDelivery", str(delivery_id))
    attempts = session.exec(
        sm_select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id).order_by(col(WebhookAttempt.id))
    ).all()
    return row, list(attempts)


def set_policy(
    session: Session,
    clock: Clock,
    *,
    plan_key: str | None,
    tenant_id: str | None,
    quota_percents: list[int] | None,
    low_balance: int | None,
    organization_id: str = DEFAULT_ORG_ID,
) -> AlertPolicy:
    """A plan's alert thresholds (a plan of `organization_id`, the caller's), or one tenant's
    (overriding its plan's, field by field)."""
    if (plan_key is None) == (tenant_id is None):
        raise ValidationFailed("give exactly one of planKey or tenantId", field="planKey")
    if quota_percents is not None:
        if not quota_percents or len(quota_percents) > 10 or any(not 1 <= p <= 1000 for p in quota_percents):
            raise ValidationFailed("quotaPercents: 1 to 10 values between 1 and 1000", field="quotaPercents")
        quota_percents = sorted(set(quota_percents))
    if low_balance is not None and low_balance < 0:
        raise ValidationFailed("lowBalanceCredits must not be negative", field="lowBalanceCredits")
    if plan_key is not None and PlanRepository(session).get(organization_id, plan_key) is None:
        raise NotFound("Plan", plan_key)
    if tenant_id is not None and not TenantRepository(session).exists(tenant_id):
        raise NotFound("Tenant", tenant_id)
    q = sm_select(AlertPolicy).where(
        and_(col(AlertPolicy.organization_id) == organization_id, col(AlertPolicy.plan_key) == plan_key)
        if plan_key is not None
        else AlertPolicy.tenant_id == tenant_id
    )
    org = organization_id if plan_key is not None else None
    row = session.exec(q).first() or AlertPolicy(
        organization_id=org, plan_key=plan_key, tenant_id=tenant_id, updated_at=clock.now()
    )
    row.quota_percents = quota_percents
    row.low_balance = low_balance
    row.updated_at = clock.now()
    session.add(row)
    session.flush()
    return row
