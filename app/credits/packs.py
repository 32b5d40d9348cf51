"""Credit packs: the prepaid top-ups a tenant can buy (Stripe Checkout sells them by price id)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlmodel import Session, col, select

from app.core.clock import Clock
from app.core.errors import ValidationFailed
from app.core.money import MAX_CREDITS, MICRO
from app.core.validation import check_key, check_name, check_optional
from app.credits.models import CreditPack

MAX_CENTS = 10**9  # $10M: far above any sane pack
MAX_EXPIRY_DAYS = 3660


def list_packs(session: Session, *, include_inactive: bool = False) -> list[CreditPack]:
    """Cheapest first (then fewest credits, then key), as a buyer compares them."""
    q = select(CreditPack).order_by(col(CreditPack.price_usd_cents), col(CreditPack.credits), col(CreditPack.key))
    if not include_inactive:
        q = q.where(col(CreditPack.active).is_(True))
    return list(session.exec(q).all())


def pack_by_key(session: Session, key: str) -> CreditPack | None:
    return session.get(CreditPack, key)


def pack_by_price(session: Session, stripe_price_id: str) -> CreditPack | None:
    return session.exec(select(CreditPack).where(CreditPack.stripe_price_id == stripe_price_id)).first()


def packs_covering(session: Session, shortfall_micro: int) -> list[tuple[CreditPack, int]]:
    """What a refusal suggests for a shortfall, as (pack, how many): every active pack that covers it
    alone, cheapest first (each once); if none does, the cheapest combination that covers it together
    (e.g. 2 x 120 + 3 x 20 credits for a 291.84 shortfall, never the 120 pack alone). A client tells
    the two apart: in a combination no pack covers the shortfall by itself."""
    active = list_packs(session)
    covering = [(p, 1) for p in active if p.credits >= shortfall_micro]
    if covering or not active:
        return covering
    return cheapest_cover(active, shortfall_micro)


MAX_COVER_STEPS = 20_000  # table size of the exact search; past it, the pack with the best rate only


def cheapest_cover(packs: list[CreditPack], shortfall_micro: int) -> list[tuple[CreditPack, int]]:
    """The cheapest multiset of `packs` whose credits add up to at least the shortfall (ties: fewer
    credits, then fewer packs), by dynamic programming over the shortfall in steps of the packs'
    greatest common divisor of credits (whole-credit packs make steps of a credit or more)."""
    step = 0
    for p in packs:
        step = math.gcd(step, int(p.credits))
    units = -(-shortfall_micro // step)
    sizes = [int(p.credits) // step for p in packs]
    if units > MAX_COVER_STEPS:
        # A shortfall far past the packs' sizes: as many of the cheapest per credit as cover it.
        i = min(range(len(packs)), key=lambda j: (packs[j].price_usd_cents / sizes[j], -sizes[j]))
        return [(packs[i], -(-units // sizes[i]))]
    # best[u]: (cents, units bought, packs bought, last pack) of the cheapest cover of u units.
    best: list[tuple[int, int, int, int]] = [(0, 0, 0, -1)]
    for u in range(1, units + 1):
        best.append(
            min(
                (
                    best[max(u - size, 0)][0] + packs[i].price_usd_cents,
                    best[max(u - size, 0)][1] + size,
                    best[max(u - size, 0)][2] + 1,
                    i,
                )
                for i, size in enumerate(sizes)
            )
        )
    counts: dict[int, int] = {}
    u = units
    while u > 0:
        i = best[u][3]
        counts[i] = counts.get(i, 0) + 1
        u = max(u - sizes[i], 0)
    # Largest first: how a buyer reads "2 x Large, 3 x Small".
    return [(packs[i], n) for i, n in sorted(counts.items(), key=lambda kv: -sizes[kv[0]])]


@dataclass
class PackInput:
    key: str
    name: str
    credits: int  # micro-credits
    price_usd_cents: int
    stripe_price_id: str | None = None
    expires_after_days: int | None = None
    active: bool = True


def upsert_pack(session: Session, clock: Clock, data: PackInput) -> CreditPack:
    """Idempotent by key."""
    check_key(data.key)
    name = check_name(data.name)
    price_id = check_optional(data.stripe_price_id, field="stripePriceId")
    if isinstance(data.credits, bool) or data.credits <= 0 or data.credits > int(MAX_CREDITS) * MICRO:
        raise ValidationFailed("credits must be positive and within range", field="credits")
    cents = data.price_usd_cents
    if isinstance(cents, bool) or not isinstance(cents, int) or cents < 0 or cents > MAX_CENTS:
        raise ValidationFailed(f"priceUsdCents must be between 0 and {MAX_CENTS}", field="priceUsdCents")
    days = data.expires_after_days
    if days is not None and (isinstance(days, bool) or days < 1 or days > MAX_EXPIRY_DAYS):
        raise ValidationFailed(f"expiresAfterDays must be between 1 and {MAX_EXPIRY_DAYS}", field="expiresAfterDays")
    if price_id is not None:
        other = pack_by_price(session, price_id)
        if other is not None and other.key != data.key:
            raise ValidationFailed(f"stripePriceId is already used by pack {other.key!r}", field="stripePriceId")
    now = clock.now()
    pack = pack_by_key(session, data.key)
    if pack is None:
        pack = CreditPack(
            key=data.key, name=name, credits=data.credits, price_usd_cents=cents, created_at=now, updated_at=now
        )
    pack.name = name
    pack.credits = data.credits
    pack.price_usd_cents = cents
    pack.stripe_price_id = price_id
    pack.expires_after_days = days
    pack.active = data.active
    pack.updated_at = now
    session.add(pack)
    session.flush()
    return pack
