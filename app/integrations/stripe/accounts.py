"""Each organization's own Stripe account: connecting it (validated by a read call), the gateway that
acts on it, the secret its endpoint verifies with, and re-encrypting the stored secrets.

Two ways to connect (docs/organization-stripe.md):
  connect         a Stripe Connect account id: the platform's key acts with `Stripe-Account`, and the
                  account's events reach the platform's one Connect endpoint (/webhooks/stripe/connect);
  restricted_key  a restricted key (rk_...) of the organization's account, and the signing secret of
                  its endpoint /webhooks/stripe/{organization}.
The key and the secret are write-only: stored as Fernet tokens (secretbox.py), decrypted only to call
Stripe or verify a signature, never returned, logged, or named in an error.

Like service.py these functions span a network call, so they take the engine and run their own short
transactions: the validating read happens before the write transaction opens."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import stripe
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app.audit.service import Target, append
from app.core.auth import Principal
from app.core.clock import Clock
from app.core.db import unit_of_work
from app.core.errors import NotFound, ValidationFailed
from app.core.ids import parse_id
from app.integrations.stripe.client import StripeGateway, StripeNotConfigured, StripeUnavailable
from app.integrations.stripe.models import OrganizationStripe
from app.integrations.stripe.secretbox import SecretBox
from app.organizations.models import END_USER, Organization
from app.settings import Settings
from app.tenants.models import Tenant

log = logging.getLogger("meterkit.stripe")

# The metadata key the platform sets on a Connect account it onboarded for an organization: the
# proof that the account is that organization's (account ids are no secret; anyone can name one).
ORGANIZATION_METADATA = "meterkit_organization_id"
CONNECT = "connect"
RESTRICTED_KEY = "restricted_key"
_ACCOUNT = re.compile(r"^acct_[A-Za-z0-9]{1,64}$")
_RESTRICTED = re.compile(r"^rk_(live|test)_[A-Za-z0-9]{8,247}$")
_WHSEC = re.compile(r"^whsec_[A-Za-z0-9+/=_-]{8,249}$")


@dataclass
class ConnectInput:
    account_id: str | None = None
    restricted_key: str | None = None
    webhook_secret: str | None = None

    def __repr__(self) -> str:  # never the key or the secret, whatever prints this
        return f"ConnectInput(account_id={self.account_id!r}, restricted_key=<hidden>, webhook_secret=<hidden>)"


# ------------------------------------------------------------------------------------------- SQL


class ConnectionRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, organization_id: str) -> OrganizationStripe | None:
        return self.s.get(OrganizationStripe, organization_id)

    def by_account(self, account_id: str) -> OrganizationStripe | None:
        return self.s.exec(select(OrganizationStripe).where(OrganizationStripe.account_id == account_id)).first()

    def all(self) -> list[OrganizationStripe]:
        return list(self.s.exec(select(OrganizationStripe).order_by(col(OrganizationStripe.organization_id))).all())

    def connected_ids(self, organization_ids: set[str]) -> set[str]:
        if not organization_ids:
            return set()
        q = select(OrganizationStripe.organization_id).where(
            col(OrganizationStripe.organization_id).in_(sorted(organization_ids))
        )
        return set(self.s.exec(q).all())

    def end_users_with_customers(self, organization_id: str) -> int:
        q = select(func.count()).where(
            Tenant.organization_id == organization_id,
            Tenant.kind == END_USER,
            col(Tenant.stripe_customer_id).is_not(None),
        )
        return int(self.s.exec(q).one())

    def save(self, row: OrganizationStripe) -> OrganizationStripe:
        self.s.add(row)
        self.s.flush()
        return row


# ------------------------------------------------------------------------------------------- gateways


def gateway_for(settings: Settings, row: OrganizationStripe, box: SecretBox | None = None) -> StripeGateway:
    """The gateway that acts on the organization's own account."""
    if row.mode == CONNECT:
        return StripeGateway.for_connected_account(settings, row.account_id)
    assert row.api_key_token is not None
    return StripeGateway.for_restricted_key(
        settings, (box or SecretBox.from_settings(settings)).decrypt(row.api_key_token)
    )


def organization_gateway(engine: Engine, settings: Settings, organization_id: str) -> StripeGateway | None:
    """The organization's own account's gateway; None when it connected none."""
    with unit_of_work(engine, write=False) as s:
        row = ConnectionRepository(s).get(organization_id)
    return gateway_for(settings, row) if row is not None else None


def gateway_for_tenant(engine: Engine, settings: Settings, tenant_id: str) -> StripeGateway:
    """Where a tenant's Stripe objects live: an end user of an organization that connected its own
    Stripe on that account; everyone else (organizations' own accounts, which buy the platform's packs
    and tiers, and end users of organizations without their own Stripe) on the platform's."""
    with unit_of_work(engine, write=False) as s:
        tenant = s.get(Tenant, tenant_id)
        row = ConnectionRepository(s).get(tenant.organization_id) if tenant and tenant.kind == END_USER else None
    return gateway_for(settings, row) if row is not None else StripeGateway.from_settings(settings)


def webhook_secret(engine: Engine, settings: Settings, organization_id: str) -> str | None:
    """The signing secret of /webhooks/stripe/{organization}; None when it has no such endpoint."""
    with unit_of_work(engine, write=False) as s:
        row = ConnectionRepository(s).get(organization_id)
    if row is None or row.mode != RESTRICTED_KEY or row.webhook_secret_token is None:
        return None
    return SecretBox.from_settings(settings).decrypt(row.webhook_secret_token)


def connected_organizations(engine: Engine) -> list[str]:
    with unit_of_work(engine, write=False) as s:
        return [r.organization_id for r in ConnectionRepository(s).all()]


def organization_for_account(engine: Engine, account_id: str) -> str | None:
    """The organization that connected `account_id` by Connect (the Connect endpoint's lookup)."""
    with unit_of_work(engine, write=False) as s:
        row = ConnectionRepository(s).by_account(account_id)
    return row.organization_id if row is not None and row.mode == CONNECT else None


# ------------------------------------------------------------------------------------------- connecting


def _check_shape(data: ConnectInput) -> str:
    if data.account_id is not None:
        if data.restricted_key is not None or data.webhook_secret is not None:
            raise ValidationFailed("give accountId, or restrictedKey and webhookSecret, not both", field="accountId")
        if not isinstance(data.account_id, str) or not _ACCOUNT.match(data.account_id):
            raise ValidationFailed("accountId is a Stripe account id (acct_...)", field="accountId")
        return CONNECT
    if data.restricted_key is None:
        raise ValidationFailed("give accountId, or restrictedKey and webhookSecret", field="restrictedKey")
    # The messages describe the expected shape and never repeat what was given.
    if data.restricted_key.startswith(("sk_", "pk_")):
        raise ValidationFailed(
            "restrictedKey must be a restricted key (rk_...), never the account's secret or publishable key",
            field="restrictedKey",
        )
    if not _RESTRICTED.match(data.restricted_key):
        raise ValidationFailed(
            "restrictedKey is a Stripe restricted key (rk_live_... or rk_test_...)", field="restrictedKey"
        )
    if data.webhook_secret is None or not _WHSEC.match(data.webhook_secret):
        raise ValidationFailed("webhookSecret is the endpoint's signing secret (whsec_...)", field="webhookSecret")
    return RESTRICTED_KEY


def _validate(gateway: StripeGateway, field: str) -> dict[str, object]:
    """The read call: the account the credentials act on. Stripe's own message can quote part of the
    key, so it is never passed on."""
    try:
        account = gateway.retrieve_account()
    except (stripe.AuthenticationError, stripe.PermissionError) as exc:
        log.info("stripe connection refused by Stripe (%s)", type(exc).__name__)
        if field == "accountId":
            message = "Stripe refused to act for this account: it is not connected to the platform"
        else:
            message = "Stripe refused the key: it is invalid, revoked, or may not read the account (Account: read)"
        raise ValidationFailed(message, field=field) from None
    except stripe.InvalidRequestError as exc:
        log.info("stripe connection refused by Stripe (%s)", type(exc).__name__)
        raise ValidationFailed("Stripe does not know this account", field=field) from None
    except stripe.StripeError as exc:
        log.warning("stripe connection: Stripe unreachable (%s)", type(exc).__name__)
        raise StripeUnavailable("Stripe could not be reached to check the account; try again") from None
    if not isinstance(account.get("id"), str) or not _ACCOUNT.match(str(account["id"])):
        raise StripeUnavailable("Stripe answered no account id; try again")
    return account


def connect_stripe(
    engine: Engine,
    settings: Settings,
    clock: Clock,
    actor: Principal,
    organization_id: str,
    data: ConnectInput,
    *,
    validate: Callable[[StripeGateway, str], dict[str, object]] = _validate,
) -> OrganizationStripe:
    """Connect (or re-connect) the organization's own Stripe. Only the organization itself may."""
    parse_id(organization_id, "org")
    if actor.organization_id != organization_id or actor.tenant_id is not None:
        raise NotFound("Organization", organization_id)  # another's id looks missing, as everywhere
    mode = _check_shape(data)
    box = SecretBox.from_settings(settings)  # production without a server key stops here, before Stripe
    with unit_of_work(engine, write=False) as s:
        if s.get(Organization, organization_id) is None:
            raise NotFound("Organization", organization_id)
    if mode == CONNECT:
        assert data.account_id is not None
        try:
            gateway = StripeGateway.for_connected_account(settings, data.account_id)
        except StripeNotConfigured:
            raise ValidationFailed(
                "this platform has no Stripe key to act for connected accounts", field="accountId"
            ) from None
        account = validate(gateway, "accountId")
        if account["id"] != data.account_id:
            raise ValidationFailed("Stripe answered for another account than accountId", field="accountId")
        metadata = account.get("metadata")
        bound = metadata.get(ORGANIZATION_METADATA) if isinstance(metadata, dict) else None
        if bound != organization_id:
            # Being connected to the platform is not enough: the platform binds the account to the
            # organization it onboarded it for, or another organization could claim it first.
            raise ValidationFailed(
                f"the platform has not onboarded this account for this organization "
                f"(its metadata {ORGANIZATION_METADATA} must name it)",
                field="accountId",
            )
    else:
        assert data.restricted_key is not None
        account = validate(StripeGateway.for_restricted_key(settings, data.restricted_key), "restrictedKey")
    account_id = str(account["id"])
    field = "accountId" if mode == CONNECT else "restrictedKey"

    with unit_of_work(engine) as s:
        repo = ConnectionRepository(s)
        holder = repo.by_account(account_id)
        if holder is not None and holder.organization_id != organization_id:
            raise ValidationFailed("this Stripe account is connected to another organization", field=field)
        row = repo.get(organization_id)
        if (row is None or row.account_id != account_id) and repo.end_users_with_customers(organization_id):
            # Their Stripe customers live on the account they were made on; moving them is not automatic.
            raise ValidationFailed(
                "end users of this organization already have Stripe customers on another account; "
                "connect that same account",
                field=field,
            )
        now = clock.now()
        before = None if row is None else {"mode": row.mode, "account_id": row.account_id}
        if row is None:
            row = OrganizationStripe(
                organization_id=organization_id, mode=mode, account_id=account_id, connected_at=now, updated_at=now
            )
        row.mode = mode
        row.account_id = account_id
        key = data.restricted_key if mode == RESTRICTED_KEY else settings.stripe_api_key
        row.livemode = bool(key and key.startswith(("sk_live_", "rk_live_")))
        row.api_key_token = box.encrypt(data.restricted_key) if mode == RESTRICTED_KEY and data.restricted_key else None
        row.webhook_secret_token = (
            box.encrypt(data.webhook_secret) if mode == RESTRICTED_KEY and data.webhook_secret else None
        )
        row.updated_at = now
        repo.save(row)
        # The audit entry names the mode and the account, never the tokens.
        append(
            s.connection(),
            actor,
            now,
            "connectStripe",
            Target("organization_stripe", organization_id, organization_id=organization_id, snap=lambda _c: None),
            before,
            {"mode": mode, "account_id": account_id},
        )
        s.refresh(row)
        s.expunge(row)
        return row


def stripe_connection(session: Session, actor: Principal, organization_id: str) -> OrganizationStripe | None:
    """The organization's connection (its key and secret stay in the row: edges show neither)."""
    parse_id(organization_id, "org")
    if actor.role != "operator" and actor.organization_id != organization_id:
        raise NotFound("Organization", organization_id)
    return ConnectionRepository(session).get(organization_id)


# ------------------------------------------------------------------------------------------- rotation


def rotate_secrets(engine: Engine, settings: Settings, clock: Clock) -> int:
    """Re-encrypt every stored key and secret under the first server key (MultiFernet.rotate); returns
    how many rows it rewrote. Run after putting a new key first in METERKIT_SECRETS_KEYS, then drop the
    old one. Each row in its own short transaction: a crash halfway leaves every row readable."""
    box = SecretBox.from_settings(settings)
    with unit_of_work(engine, write=False) as s:
        ids = [r.organization_id for r in ConnectionRepository(s).all() if r.api_key_token or r.webhook_secret_token]
    done = 0
    for organization_id in ids:
        with unit_of_work(engine) as s:
            row = ConnectionRepository(s).get(organization_id)
            if row is None:
                continue
            if row.api_key_token:
                row.api_key_token = box.rotate(row.api_key_token)
            if row.webhook_secret_token:
                row.webhook_secret_token = box.rotate(row.webhook_secret_token)
            row.updated_at = clock.now()
            ConnectionRepository(s).save(row)
            done += 1
    return done
