"""Refusals of the metered call. Each maps onto a typed GraphQL result; raising them
inside the unit of work rolls back, so a refused call writes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app.core.errors import DomainError


class NotEntitled(DomainError):
    code = "NOT_ENTITLED"

    def __init__(self, primitive: str, kit: str | None, reason: str, *, connection: str | None = None) -> None:
        super().__init__(reason)
        self.primitive, self.kit, self.connection = primitive, kit, connection


class LimitExceeded(DomainError):
    code = "LIMIT_EXCEEDED"

    def __init__(self, primitive: str, limit: str, allowed: int, requested: int, retry_after: int | None) -> None:
        super().__init__(f"{primitive}: {limit} limit is {allowed}")
        self.primitive, self.limit, self.allowed, self.requested = primitive, limit, allowed, requested
        self.retry_after = retry_after


def quota_message(primitive: str, quota: int, used: int, requested: int) -> str:
    """What is used and what is left, never "spent" while some is left: e.g. "quota of 1000
    email.send this period: 950 used, 50 left, this call needs 100"."""
    return (
        f"quota of {quota} {primitive} this period: {used} used, {max(quota - used, 0)} left, "
        f"this call needs {requested}"
    )


class QuotaExceeded(DomainError):
    code = "QUOTA_EXCEEDED"

    def __init__(self, primitive: str, quota: int, used: int, period_end: datetime, requested: int) -> None:
        super().__init__(quota_message(primitive, quota, used, requested))
        self.primitive, self.quota, self.used, self.period_end = primitive, quota, used, period_end
        self.requested = requested


@dataclass(frozen=True)
class PackInfo:
    key: str
    name: str
    credits: int
    price_usd_cents: int
    quantity: int = 1  # how many of this pack: more than 1 only in a combination (app/credits/packs.py)


class InsufficientCredits(DomainError):
    code = "INSUFFICIENT_CREDITS"

    def __init__(self, required: int, available: int, packs: list[PackInfo]) -> None:
        super().__init__("insufficient credits")
        self.required, self.available, self.packs = required, available, packs
        self.tenant_id: str | None = None
        self.period_start: datetime | None = None

    @property
    def shortfall(self) -> int:
        return max(self.required - self.available, 0)


class IdempotencyConflict(DomainError):
    code = "IDEMPOTENCY_CONFLICT"

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was used with different parameters")
        self.key = key


class HoldClosed(DomainError):
    code = "HOLD_CLOSED"

    def __init__(self, hold_id: str, status: str) -> None:
        super().__init__(f"hold {hold_id} is {status}")
        self.hold_id, self.status = hold_id, status


class OrganizationCreditsExhausted(DomainError):
    """The end user's organization has no credits left for this call. The end user is told only that:
    not the organization's balance, not its packs (REST: 402 organization_credits_exhausted). The
    organization is alerted (balance.exhausted on its own account, app/alerts/refusals.py)."""

    code = "ORGANIZATION_CREDITS_EXHAUSTED"

    def __init__(self, organization_id: str) -> None:
        super().__init__("the organization this user belongs to is out of credits; try again later")
        # For the alert, which the command records after this transaction rolls back; never shown.
        self.tenant_id: str | None = organization_id
        self.period_start: datetime | None = None
        self.required = 0
        self.available = 0


class EndUserCreditCapExceeded(DomainError):
    """The end user has cost its organization its credit cap for this period
    (Organization.end_user_credit_cap): its further calls are refused until the period ends, so one
    end user cannot spend the organization's credits for all the others (REST: 429, like a quota). Its own figures
    only; never the organization's balance."""

    code = "END_USER_CREDIT_CAP"

    def __init__(self, cap: int, used: int, requested: int, period_end: datetime) -> None:
        super().__init__("this user's credit cap for the period is reached")
        self.cap, self.used, self.requested, self.period_end = cap, used, requested, period_end
