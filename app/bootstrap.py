"""First start: migrate, load the demo catalog (kits, plans, platform tiers, pack prices), make an
operator key."""

from __future__ import annotations

from sqlmodel import Session

from app.account_kits.repository import AccountKitRepository
from app.account_kits.service import KitInput, KitLimit, upsert_account_kit
from app.core.clock import Clock
from app.core.db import engine_for, unit_of_work
from app.core.migrate import startup_lock, upgrade
from app.core.money import MICRO
from app.credits.packs import pack_by_key, pack_by_price
from app.organizations.models import DEFAULT_ORG_ID
from app.organizations.tiers import TierInput, get_tier, upsert_tier
from app.plans.repository import PlanRepository
from app.plans.service import PlanInput, upsert_plan
from app.settings import Settings
from app.tenants.service import ensure_operator_key

DEMO_KITS = [
    KitInput(
        key="kit_free",
        name="Free",
        allowed_primitives=["email.send", "search.web", "url.read", "research.quick", "stock_photo.search"],
        limits=[KitLimit("email.send", max_quantity_per_call=10, calls_per_minute=30)],
    ),
    KitInput(
        key="kit_pro",
        name="Pro",
        allowed_primitives=[
            "email.*",
            "search.*",
            "url.*",
            "research.*",
            "ceo.*",
            "stock_photo.*",
            "browser.*",
            "llm.*",
            "image.*",
            "video.*",
        ],
        limits=[KitLimit("email.send", max_quantity_per_call=100, calls_per_minute=600)],
        allowed_connections=["gmail", "slack", "github"],
    ),
]

DEMO_PLANS = [
    PlanInput(
        key="free",
        name="Free",
        account_kit_id="kit_free",
        period="month",
        quotas={"email.send": 100, "search.web": 500},
        included_credits=0,
    ),
    # The demo organization's end-user plan Pro (the /billing document's): kit_pro, 1000 emails and
    # 5000 searches a month. Its credits are the platform tier's business (DEMO_TIERS), not an end user's.
    PlanInput(
        key="pro",
        name="Pro",
        account_kit_id="kit_pro",
        period="month",
        stripe_price_id="price_pro_monthly",
        quotas={"email.send": 1000, "search.web": 5000},
        included_credits=0,
    ),
]

# The platform's tiers (the credits document's): what an organization's own account is on. Pro
# brings 200 credits a month (`meterkit billing upgrade --plan pro` with an organization key).
DEMO_TIERS = [
    TierInput(key="free", name="Free"),
    TierInput(key="pro", name="Pro", monthly_credits=200 * MICRO, stripe_price_id="price_tier_pro_monthly"),
]


# Stripe prices of the packs the pricing migration seeds (small, medium, large), so that
# purchaseCreditPack works out of the box against `meterkit dev stripe`, which creates these
# prices. Against a real Stripe account, point each pack at a real price (upsertCreditPack).
DEMO_PACK_PRICES = {"small": "price_pack_small", "medium": "price_pack_medium", "large": "price_pack_large"}


def load_demo_catalog(session: Session, clock: Clock) -> None:
    """Adds what is missing; never overwrites an operator's edits."""
    kits = AccountKitRepository(session)
    for kit in DEMO_KITS:
        if kits.get(DEFAULT_ORG_ID, kit.key) is None:
            upsert_account_kit(session, clock, kit)
    plans = PlanRepository(session)
    for plan in DEMO_PLANS:
        if plans.get(DEFAULT_ORG_ID, plan.key) is None:
            upsert_plan(session, clock, plan)
    for tier in DEMO_TIERS:
        if get_tier(session, tier.key) is None:
            upsert_tier(session, clock, tier)
    for key, price_id in DEMO_PACK_PRICES.items():
        pack = pack_by_key(session, key)
        if pack is not None and pack.stripe_price_id is None and pack_by_price(session, price_id) is None:
            pack.stripe_price_id = price_id
            pack.updated_at = clock.now()
            session.add(pack)
    session.flush()


def prepare(settings: Settings, *, demo: bool = True) -> str | None:
    # One process at a time: of several first starts, exactly one makes (and prints) the key.
    # The lock and the migrations need a session (METERKIT_DB_SESSION_URL behind a transaction pooler).
    with startup_lock(settings.session_database_url):
        upgrade(settings.session_database_url, lock=False)
        engine = engine_for(settings)
        clock = Clock()
        try:
            with unit_of_work(engine) as s:
                if demo:
                    load_demo_catalog(s, clock)
                return ensure_operator_key(s, clock, settings.operator_key)
        finally:
            engine.dispose()
