"""The organization's rules: creation (its house account with its signup credits, and its first
key) and the platform's switches (end-user wallets, platform credits exempt, a per-end-user cap).

Invariants: an organization's house tenant has the organization's id and kind "organization"; it is
made with the organization, in the same transaction, and never changes kind. Money of the
organization moves only through app/credits/ledger.py on that account, so every rule of a tenant's
credits (buckets, append-only ledger, holds, packs, the -10 buffer) holds for it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from app.core.auth import Principal, TenantScope
from app.core.clock import Clock
from app.core.errors import NotFound, ValidationFailed
from app.core.ids import new_id, parse_id
from app.core.validation import check_name, check_optional
from app.credits import ledger
from app.organizations.models import HOUSE, Organization
from app.organizations.repository import OrganizationRepository
from app.tenants.models import ApiKey, Tenant
from app.tenants.repository import TenantRepository
from app.tenants.service import create_api_key

MAX_CAP = 10**15  # micro-credits: a billion credits


@dataclass
class OrganizationInput:
    name: str
    external_id: str | None = None


@dataclass
class OrganizationSwitches:
    end_user_wallets: bool | None = None
    platform_credits_exempt: bool | None = None
    end_user_credit_cap: int | None = None
    clear_end_user_credit_cap: bool = False


def create_organization(
    session: Session, clock: Clock, data: OrganizationInput, *, signup_micro: int, caller: Principal | None
) -> tuple[Organization, ApiKey, str]:
    """The organization, its house account with the signup credits, and its first key (raw, shown once).
    New organizations pay for their end users (wallets off) and are charged (not exempt)."""
    name = check_name(data.name)
    external_id = check_optional(data.external_id, field="externalId")
    repo = OrganizationRepository(session)
    if external_id is not None and repo.by_external_id(external_id) is not None:
        raise ValidationFailed("externalId is already used by another organization", field="externalId")
    now = clock.now()
    org = repo.add(
        Organization(
            id=new_id("org"),
            name=name,
            external_id=external_id,
            end_user_wallets=False,
            platform_credits_exempt=False,
            created_at=now,
        )
    )
    TenantRepository(session).add(
        Tenant(id=org.id, name=name, meta={}, created_at=now, organization_id=org.id, kind=HOUSE)
    )
    scope = TenantScope(org.id)
    ledger.open_account(session, scope, clock)
    if signup_micro > 0:
        ledger.grant(session, scope, clock, amount=signup_micro, source="signup", grant_key="signup")
    key, raw = create_api_key(session, clock, role="organization", scope=scope, name="first", caller=None)
    return org, key, raw


def get_organization(session: Session, principal: Principal, organization_id: str) -> Organization:
    """Platform keys read any organization; an organization only itself (another's id looks missing)."""
    parse_id(organization_id, "org")
    if principal.role != "operator" and principal.organization_id != organization_id:
        raise NotFound("Organization", organization_id)
    org = OrganizationRepository(session).get(organization_id)
    if org is None:
        raise NotFound("Organization", organization_id)
    return org


def update_organization(session: Session, organization_id: str, switches: OrganizationSwitches) -> Organization:
    parse_id(organization_id, "org")
    org = OrganizationRepository(session).get(organization_id)
    if org is None:
        raise NotFound("Organization", organization_id)
    if switches.end_user_wallets is not None:
        org.end_user_wallets = switches.end_user_wallets
    if switches.platform_credits_exempt is not None:
        org.platform_credits_exempt = switches.platform_credits_exempt
    if switches.clear_end_user_credit_cap:
        org.end_user_credit_cap = None
    elif switches.end_user_credit_cap is not None:
        if not 0 <= switches.end_user_credit_cap <= MAX_CAP:
            raise ValidationFailed(f"endUserCreditCap must be between 0 and {MAX_CAP}", field="endUserCreditCap")
        org.end_user_credit_cap = switches.end_user_credit_cap
    return OrganizationRepository(session).add(org)
