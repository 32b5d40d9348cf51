"""Plans: upsert (an edit, never a silent replacement) and archive.

An upsert names the fields it changes. An omitted field keeps its value; a field is cleared only
when given explicitly (`stripePriceId: null`, `quotas: []`). An edit that would take something
away from current users (remove a quota, cut the included credits, change or drop the Stripe price
live subscriptions carry, point subscribers at another kit) is refused with ConfirmationRequired
listing every change, unless confirmed; a dry run answers the would-be plan and its changes and
writes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from sqlmodel import Session

from app.account_kits.repository import AccountKitRepository
from app.catalog.repository import known_keys
from app.core.changes import Change, ConfirmationRequired
from app.core.clock import Clock
from app.core.errors import NotFound, ValidationFailed
from app.core.money import MICRO, format_credits
from app.core.primitives import validate_primitive
from app.core.validation import check_key, check_name, check_optional
from app.organizations.models import DEFAULT_ORG_ID
from app.plans.models import Plan
from app.plans.repository import PlanRepository

PERIODS = ("day", "week", "month", "year")
OVERAGE = ("refuse", "allow")
# What a subscriber pays and gets: a change to any of them makes a new version of the plan.
VERSIONED = ("stripePriceId", "includedCredits", "quotas")
# Quotas cross the wire as GraphQL Int (32-bit signed), so that is their range too.
MAX_QUOTA = 2**31 - 1


class _Keep:
    """An omitted field of an edit: the plan keeps its value."""

    def __repr__(self) -> str:
        return "KEEP"

    def __bool__(self) -> bool:
        return False  # nothing given


KEEP: Final = _Keep()

# primitive -> (units per period, metered Stripe price of the overage or None)
Quotas = dict[str, tuple[int, str | None]]


@dataclass
class PlanInput:
    """What an upsert sets. KEEP (the default of every field but the key) leaves the plan's value;
    a new plan needs name and account_kit_id. `quotas` replaces the whole set; `set_quotas` adds or
    changes just the primitives it names and `remove_quotas` drops the ones it names."""

    key: str
    name: str | _Keep = KEEP
    account_kit_id: str | _Keep = KEEP
    period: str | _Keep = KEEP
    stripe_price_id: str | None | _Keep = KEEP
    quotas: dict[str, int] | _Keep = KEEP
    overage_prices: dict[str, str] = field(default_factory=dict)  # primitive -> metered Stripe price
    set_quotas: dict[str, int] = field(default_factory=dict)
    remove_quotas: list[str] = field(default_factory=list)
    overage: str | _Keep = KEEP
    included_credits: int | None | _Keep = KEEP  # micro-credits; None clears to 0


@dataclass
class PlanEdit:
    """An upsert's outcome: the plan as it is (or would be), its quotas, and what changed."""

    plan: Plan
    quotas: Quotas
    changes: list[Change]
    created: bool


def _credits(micro: int) -> str:
    return format_credits(micro)


def _quota_text(q: tuple[int, str | None] | None) -> str | None:
    if q is None:
        return None
    return f"{q[0]}" + (f" (overage {q[1]})" if q[1] else "")


def _validate(session: Session, data: PlanInput) -> None:
    check_key(data.key)
    if not isinstance(data.name, _Keep):
        check_name(data.name)
    if not isinstance(data.period, _Keep) and data.period not in PERIODS:
        raise ValidationFailed(f"period must be one of {', '.join(PERIODS)}", field="period")
    if not isinstance(data.overage, _Keep) and data.overage not in OVERAGE:
        raise ValidationFailed("overage must be refuse or allow", field="overage")
    given = {**(data.quotas if not isinstance(data.quotas, _Keep) else {}), **data.set_quotas}
    known = known_keys(session.connection()) if given or data.remove_quotas else set()
    for primitive, quota in given.items():
        validate_primitive(primitive, known, field="quotas.primitive")
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 0 or quota > MAX_QUOTA:
            raise ValidationFailed(f"quota for {primitive} must be a non-negative integer", field="quotas")
    for primitive in data.remove_quotas:
        if primitive in data.set_quotas:
            raise ValidationFailed(f"{primitive} is both set and removed", field="removeQuotas")
    for overage_price in data.overage_prices.values():
        check_optional(overage_price, field="quotas.overagePriceId")
    if (
        not isinstance(data.included_credits, _Keep)
        and data.included_credits is not None
        and (data.included_credits < 0 or data.included_credits > 10**12 * MICRO)
    ):
        raise ValidationFailed("includedCredits must be non-negative", field="includedCredits")


def _new_quotas(data: PlanInput, before: Quotas) -> Quotas:
    prices = data.overage_prices
    given = data.quotas
    after = dict(before) if isinstance(given, _Keep) else {p: (q, prices.get(p)) for p, q in given.items()}
    for p, q in data.set_quotas.items():
        after[p] = (q, prices.get(p))
    for p in data.remove_quotas:
        if p not in after:
            raise ValidationFailed(f"plan {data.key!r} has no quota for {p}", field="removeQuotas")
        del after[p]
    return dict(sorted(after.items()))


def edit_plan(session: Session, clock: Clock, data: PlanInput, organization_id: str = DEFAULT_ORG_ID) -> PlanEdit:
    """The plan this upsert would leave, its quotas and its changes against the stored one,
    without writing. Raises what upsert_plan would (validation, a missing kit)."""
    _validate(session, data)
    repo = PlanRepository(session)
    stored = repo.get(organization_id, data.key)
    if stored is None:
        if isinstance(data.name, _Keep):
            raise ValidationFailed("a new plan needs a name", field="name")
        if isinstance(data.account_kit_id, _Keep):
            raise ValidationFailed("a new plan needs an accountKitId", field="accountKitId")
    now = clock.now()
    before_quotas: Quotas = {}
    if stored is not None:
        before_quotas = {q.primitive: (q.quota, q.overage_price_id) for q in repo.quotas_of(stored)}

    if isinstance(data.stripe_price_id, _Keep):
        price = stored.stripe_price_id if stored is not None else None
    else:
        price = check_optional(data.stripe_price_id, field="stripePriceId")

    def pick(value: object, current: object) -> object:
        return current if isinstance(value, _Keep) else value

    plan = Plan(
        organization_id=organization_id,
        key=data.key,
        name=str(pick(data.name, stored.name if stored else "")).strip(),
        account_kit_key=str(pick(data.account_kit_id, stored.account_kit_key if stored else "")),
        period=str(pick(data.period, stored.period if stored else "month")),
        overage=str(pick(data.overage, stored.overage if stored else "refuse")),
        stripe_price_id=price,
        included_credits=(stored.included_credits if stored is not None else 0)
        if isinstance(data.included_credits, _Keep)
        else (data.included_credits or 0),
        archived=False,
        created_at=stored.created_at if stored is not None else now,
        updated_at=now,
    )
    quotas = _new_quotas(data, before_quotas)
    if plan.overage != "allow" and any(price for _, price in quotas.values()):
        raise ValidationFailed("an overage price needs overage: allow", field="quotas.overagePriceId")
    kit_named = not isinstance(data.account_kit_id, _Keep) or stored is None
    if kit_named and AccountKitRepository(session).get(organization_id, plan.account_kit_key) is None:
        raise NotFound("AccountKit", plan.account_kit_key)
    if plan.stripe_price_id is not None:
        other = repo.by_price(organization_id, plan.stripe_price_id)
        if other is not None and other.key != data.key:
            raise ValidationFailed(f"stripePriceId is already used by plan {other.key!r}", field="stripePriceId")
        old = repo.by_old_price(organization_id, plan.stripe_price_id)
        if old is not None and old.plan_key != data.key:
            raise ValidationFailed(
                f"stripePriceId was plan {old.plan_key!r}'s (version {old.version})", field="stripePriceId"
            )
    changes = _diff(repo, stored, plan, before_quotas, quotas) if stored is not None else []
    plan.version = stored.version if stored is not None else 1
    if stored is not None and any(c.field.split(".")[0] in VERSIONED for c in changes):
        # Subscribers keep the version they are on until renewal or migratePlanSubscribers.
        plan.version = stored.version + 1
        changes.append(
            Change(
                "version",
                str(stored.version),
                str(plan.version),
                why=None,
            )
        )
    return PlanEdit(plan, quotas, changes, created=stored is None)


def _diff(repo: PlanRepository, stored: Plan, plan: Plan, before: Quotas, after: Quotas) -> list[Change]:
    changes: list[Change] = []
    live = subscribers = None  # counted only when a change needs them

    def live_count() -> int:
        nonlocal live
        if live is None:
            live = repo.live_subscriptions(stored.organization_id, stored.key)
        return live

    def subscriber_count() -> int:
        nonlocal subscribers
        if subscribers is None:
            subscribers = repo.subscribers(stored.organization_id, stored.key)
        return subscribers

    for name, attr in (("name", "name"), ("period", "period"), ("overage", "overage")):
        if getattr(stored, attr) != getattr(plan, attr):
            changes.append(Change(name, getattr(stored, attr), getattr(plan, attr)))
    if stored.archived:
        changes.append(Change("archived", "true", "false"))
    if stored.account_kit_key != plan.account_kit_key:
        n = subscriber_count()
        changes.append(
            Change(
                "accountKitId",
                stored.account_kit_key,
                plan.account_kit_key,
                destructive=n > 0,
                why=f"move the entitlements of {n} tenant(s) on it to kit {plan.account_kit_key!r}",
            )
        )
    if stored.stripe_price_id != plan.stripe_price_id:
        n = live_count() if stored.stripe_price_id is not None else 0
        what = "drop" if plan.stripe_price_id is None else "replace"
        changes.append(
            Change(
                "stripePriceId",
                stored.stripe_price_id,
                plan.stripe_price_id,
                destructive=n > 0,
                why=f"{what} Stripe price {stored.stripe_price_id!r}, which {n} live subscription(s) carry",
            )
        )
    if stored.included_credits != plan.included_credits:
        cut = plan.included_credits < stored.included_credits
        changes.append(
            Change(
                "includedCredits",
                _credits(stored.included_credits),
                _credits(plan.included_credits),
                destructive=cut,
                why=f"cut the included credits from {_credits(stored.included_credits)} "
                f"to {_credits(plan.included_credits)} a period",
            )
        )
    for primitive in sorted(set(before) | set(after)):
        b, a = before.get(primitive), after.get(primitive)
        if b == a:
            continue
        changes.append(
            Change(
                f"quotas.{primitive}",
                _quota_text(b),
                _quota_text(a),
                destructive=a is None,
                why=f"remove the quota on {primitive} ({b[0] if b else 0} a period)",
            )
        )
    return changes


def upsert_plan(
    session: Session,
    clock: Clock,
    data: PlanInput,
    organization_id: str = DEFAULT_ORG_ID,
    *,
    confirm: bool = False,
) -> Plan:
    """Create a plan, or edit the fields the input names: the same input twice leaves one identical
    plan. The plan and its kit are the organization's: keys and Stripe price ids are unique per
    organization (another's `pro` is its own)."""
    edit = edit_plan(session, clock, data, organization_id)
    if not confirm and any(c.destructive for c in edit.changes):
        raise ConfirmationRequired("plan", data.key, edit.changes)
    repo = PlanRepository(session)
    plan = repo.get(organization_id, data.key)
    if plan is not None and not edit.changes:
        return plan  # nothing to change: not even updated_at
    w = edit.plan
    if plan is None:
        plan = w
    else:
        for attr in ("name", "account_kit_key", "period", "overage", "stripe_price_id", "included_credits", "version"):
            setattr(plan, attr, getattr(w, attr))
        plan.archived = False
        plan.updated_at = w.updated_at
    repo.save(plan)
    repo.replace_quotas(
        plan, {p: q for p, (q, _) in edit.quotas.items()}, {p: pr for p, (_, pr) in edit.quotas.items() if pr}
    )
    repo.save_version(plan)
    return plan


def migrate_subscribers(session: Session, clock: Clock, key: str, organization_id: str = DEFAULT_ORG_ID) -> int:
    """Move every subscriber of the plan on an older version to the newest (its quotas and included
    credits from now on; the period's credits already granted stay); how many moved."""
    repo = PlanRepository(session)
    plan = repo.get(organization_id, key)
    if plan is None:
        raise NotFound("Plan", key)
    return repo.migrate_subscribers(organization_id, key, plan.version)


def archive_plan(session: Session, clock: Clock, key: str, organization_id: str = DEFAULT_ORG_ID) -> Plan:
    """Archived plans can't be newly subscribed to; current subscribers keep them. An organization
    archives only its own plans (another's key looks missing)."""
    repo = PlanRepository(session)
    plan = repo.get(organization_id, key)
    if plan is None:
        raise NotFound("Plan", key)
    plan.archived = True
    plan.updated_at = clock.now()
    return repo.save(plan)
