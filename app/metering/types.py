"""What the metered call takes and answers: the request, its results (a charge, a hold, a check),
and the facts the charge core decides on (a tenant's terms, a decision, one charge's facts).
Plain values: no statement here (the SQL is app/metering/charge_repository.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from app.alerts.emit import QUOTA_THRESHOLDS
from app.budgets.enforce import BudgetTerms
from app.core.errors import DomainError, ValidationFailed
from app.core.primitives import check_key, validate_connection
from app.core.sql import read_ts
from app.credits import ledger
from app.metering.errors import PackInfo
from app.metering.settle_rules import SettleCut
from app.periods.rules import Period
from app.pricing.service import PriceRequest

MAX_QUANTITY = 1_000_000_000
MAX_KEY = 200
MAX_TOKENS = 10**12


@dataclass(frozen=True)
class MeterRequest:
    """One metered call: what was done, how much, and the key that makes it happen once."""

    primitive: str
    idempotency_key: str
    quantity: int = 1
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: Decimal | None = None
    elapsed_seconds: int | None = None
    num_images: int | None = None
    duration_seconds: Decimal | None = None
    reference: str | None = None
    connection: str | None = None  # the connection the call used (e.g. "gmail"): the kit must allow it
    # The key that made the call (the principal's key_id): recorded on the event and its rollup, and
    # its own budget applies. Not part of the fingerprint: the same call retried with another key of
    # the tenant is a replay.
    api_key_id: str | None = None

    def validate(self) -> MeterRequest:
        check_key(self.primitive)  # whether the catalog has it is read inside the transaction
        if not self.idempotency_key or len(self.idempotency_key) > MAX_KEY:
            raise ValidationFailed(f"idempotencyKey must be 1-{MAX_KEY} characters", field="idempotencyKey")
        if not 1 <= self.quantity <= MAX_QUANTITY:
            raise ValidationFailed(f"quantity must be between 1 and {MAX_QUANTITY}", field="quantity")
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_TOKENS:
                raise ValidationFailed(f"{name} must be between 0 and {MAX_TOKENS}", field=name)
        if self.elapsed_seconds is not None and not 0 <= self.elapsed_seconds <= 10**9:
            raise ValidationFailed("elapsedSeconds is out of range", field="elapsedSeconds")
        if self.reference is not None and len(self.reference) > 255:
            raise ValidationFailed("reference is longer than 255 characters", field="reference")
        if self.connection is not None:
            validate_connection(self.connection, field="connection")
        return self

    def price_request(self) -> PriceRequest:
        return PriceRequest(
            primitive=self.primitive,
            quantity=self.quantity,
            model=self.model,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_creation_tokens=self.cache_creation_tokens,
            cost_usd=self.cost_usd,
            elapsed_seconds=self.elapsed_seconds,
            num_images=self.num_images,
            duration_seconds=self.duration_seconds,
        )

    def fingerprint(self) -> str:
        """What "the same parameters" means for an idempotency key: every field but the key (and
        the API key that sent it: a retry from another of the tenant's keys is the same call).
        Computed once per request (the batch asks twice; the request is frozen, so it cannot change)."""
        known: str | None = self.__dict__.get("_fingerprint")
        if known is not None:
            return known
        fields = (
            self.primitive,
            self.quantity,
            self.model,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_creation_tokens,
            _text(self.cost_usd),
            self.elapsed_seconds,
            self.num_images,
            _text(self.duration_seconds),
            self.reference,
        ) + ((self.connection,) if self.connection is not None else ())  # keys stored before keep their hash
        known = self.__dict__["_fingerprint"] = hashlib.sha256(repr(fields).encode()).hexdigest()
        return known


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value.normalize())


@dataclass
class Usage:
    primitive: str
    used: int
    quota: int | None
    overage: int

    @property
    def remaining(self) -> int | None:
        return None if self.quota is None else max(self.quota - self.used, 0)

    def stored(self) -> dict[str, Any]:
        # asdict() deep-copies every field: written out, on the hot path.
        return {"primitive": self.primitive, "used": self.used, "quota": self.quota, "overage": self.overage}


@dataclass
class Charged:
    event_id: int
    credits_used: int
    credits_remaining: int
    usage: Usage
    replayed: bool = False
    cut: SettleCut | None = None  # a settle only: what the limits did not admit (app/metering/settle_rules.py)

    def stored(self) -> dict[str, Any]:
        stored = {
            "creditsUsed": self.credits_used,
            "creditsRemaining": self.credits_remaining,
            "usage": self.usage.stored(),
        }
        if self.cut is not None:  # only then: every other stored result keeps its shape
            stored["cut"] = self.cut.stored()
        return stored

    @classmethod
    def from_stored(cls, event_id: int, data: dict[str, Any]) -> Charged:
        return cls(
            event_id=event_id,
            credits_used=data["creditsUsed"],
            credits_remaining=data["creditsRemaining"],
            usage=Usage(**data["usage"]),
            replayed=True,
            cut=SettleCut.from_stored(data.get("cut")),
        )


@dataclass
class HoldView:
    id: str
    primitive: str
    quantity: int
    amount: int
    status: str
    expires_at: datetime
    settled_amount: int | None = None
    available_after: int | None = None
    replayed: bool = False


@dataclass
class TenantTerms:
    """Everything the checks need about a tenant, read with one statement."""

    plan_key: str | None
    plan_period: str | None
    overage: str
    kit_key: str | None
    kit_allowed: list[str]
    kit_limits: dict[str, Any]
    kit_connections: list[str]
    sub_start: datetime | None
    sub_end: datetime | None
    budget: BudgetTerms | None = None  # the calling key's own budget
    quota_percents: tuple[int, ...] = QUOTA_THRESHOLDS  # alert when a quota's use crosses these
    low_balance: int | None = None  # alert when available credits go below this
    sub_status: str | None = None
    recorded: Period | None = None  # the recorded period that holds now, if any
    # Who pays (app/metering/payer.py): the tenant's kind, its organization and that one's switches.
    kind: str = "end_user"
    organization_id: str | None = None
    wallets: bool = True
    exempt: bool = True
    credit_cap: int | None = None
    # The plan version whose quotas apply: the subscriber's, else the plan's newest.
    plan_version: int | None = None

    @property
    def house(self) -> bool:
        """The organization's own account: its calls are gated by credits and keys, not by a plan."""
        return self.kind == "organization"

    @property
    def tenant_pays(self) -> bool:
        """Is the price debited from this tenant's own ledger?"""
        return (not self.exempt) if self.house else self.wallets

    @property
    def org_pays(self) -> str | None:
        """The organization whose account is debited besides (an end user's, when not exempt), or None."""
        return self.organization_id if not self.house and not self.exempt and self.organization_id else None


@dataclass
class Decision:
    period: Period
    quota: int | None
    used: int
    amount: int
    rate_window: datetime | None = None
    cut: SettleCut | None = None  # a settle cut to what the limits admit


class ChargeFacts:
    """What one charge reads with the account lock (charge_repository.lock_for_charge): the stored
    event of its key, the quota row (plan quota, period count, minute calls, fixed price, catalog
    entry: None when no period was recorded yet, so it is read after the roll), and the first live
    bucket in burn order. The first
    bucket expires soonest, so when it has not expired nothing has and the sweep has nothing to do; when
    the charge fits in it, it is the only bucket the debit touches."""

    __slots__ = ("key", "primitive", "stored", "quota_row", "head")

    def __init__(self, req: MeterRequest, row: Any, recorded: bool) -> None:
        self.key, self.primitive = req.idempotency_key, req.primitive
        self.stored: tuple[Any, Any, Any] | None = (row[0], row[1], row[2]) if row[0] is not None else None
        self.quota_row: tuple[Any, ...] | None = tuple(row[3:9]) if recorded else None
        self.head = ledger.LiveBucket(row[9], row[10], read_ts(row[11])) if row[9] is not None else None


@dataclass
class CheckResult:
    allowed: bool
    reason: str | None
    message: str | None
    primitive: str | None
    connection: str | None
    quota: int | None
    used: int
    remaining: int | None
    available: int
    price: int | None
    # INSUFFICIENT_CREDITS only, as charge's InsufficientCredits: what is missing and the packs that cover it.
    shortfall: int | None = None
    packs: list[PackInfo] = field(default_factory=list)


BatchOutcome = Charged | DomainError
