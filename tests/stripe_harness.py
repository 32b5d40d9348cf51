"""Shared setup for the Stripe tests: the app served by a real uvicorn on loopback (so the
fake Stripe can POST webhooks to it), the fake Stripe server, and a seeded catalog.

The app's clock is frozen at the real current second: the `stripe` library checks the
signature tolerance against the wall clock, and the fake signs with the wall clock."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import Session

from app.core.auth import TenantScope
from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.core.money import MICRO
from app.credits.packs import PackInput, upsert_pack
from app.devtools.serving import BackgroundServer
from app.devtools.stripe_fake.fake import FakeStripe
from app.integrations.stripe.client import StripeGateway
from app.integrations.stripe.service import ensure_customer
from app.main import create_app
from app.settings import Settings
from app.subscriptions.models import Subscription
from app.tenants.models import Tenant
from app.tenants.service import create_api_key
from tests.conftest import Api, Database
from tests.fixtures_catalog import PLAN, seed_catalog

# The server key that encrypts organizations' Stripe secrets in these tests (a Fernet key).
TEST_SECRETS_KEY = "x9Pc2VfZbqM0tWm3Xo7YbN4K8d1sA6eRgHjLkQwErTs="
PRO_PRICE, TEAM_PRICE, MEDIUM_PRICE, SMALL_PRICE = "price_pro", "price_team", "price_pack_medium", "price_pack_small"


@dataclass
class StripeEnv:
    fake: FakeStripe
    db: Database
    clock: FrozenClock
    settings: Settings
    url: str
    api: Api

    @property
    def engine(self) -> Any:
        return self.db.engine

    def gateway(self) -> StripeGateway:
        return StripeGateway(self.fake.client())

    def tenant(self, name: str = "Acme") -> str:
        return self.api.create_tenant(name)

    def customer_for(self, tenant_id: str) -> str:
        """The tenant's Stripe customer, created through our own flow (mapping stored)."""
        return ensure_customer(self.engine, self.gateway(), TenantScope(tenant_id))

    def subscribe(self, tenant_id: str, price: str = PRO_PRICE) -> str:
        """Stripe side: the customer subscribes (emits subscription.created and invoice.paid)."""
        customer = self.customer_for(tenant_id)
        sub = self.fake.client().v1.subscriptions.create({"customer": customer, "items": [{"price": price}]})
        return str(sub.id)

    def read(self, fn: Any) -> Any:
        with unit_of_work(self.engine, write=False) as s:
            return fn(s)

    def state(self, tenant_id: str) -> dict[str, Any]:
        """What a tenant's plan, kit, subscription and credits look like now."""

        def run(s: Session) -> dict[str, Any]:
            t = s.get(Tenant, tenant_id)
            sub = s.get(Subscription, tenant_id)
            assert t is not None
            conn = s.connection()
            balance = conn.execute(
                text("SELECT balance FROM credit_account WHERE tenant_id = :t"), {"t": tenant_id}
            ).scalar_one()
            buckets = conn.execute(
                text(
                    "SELECT source, granted, grant_key FROM credit_bucket WHERE tenant_id = :t ORDER BY created_at, id"
                ),
                {"t": tenant_id},
            ).all()
            return {
                "plan": t.plan_key,
                "kit_pinned": t.account_kit_key,
                "status": sub.status if sub else None,
                "sub_id": sub.stripe_subscription_id if sub else None,
                "period_end": sub.current_period_end if sub else None,
                "source_event_created": sub.source_event_created if sub else None,
                "balance": int(balance),
                "grants": [(b.source, int(b.granted), b.grant_key) for b in buckets],
            }

        return cast(dict[str, Any], self.read(run))

    def inbox(self) -> list[tuple[str, str, str | None, str]]:
        return cast(
            list[tuple[str, str, str | None, str]],
            self.read(
                lambda s: [
                    tuple(r)
                    for r in s.connection()
                    .execute(text("SELECT id, type, tenant_id, outcome FROM stripe_event ORDER BY processed_at, id"))
                    .all()
                ]
            ),
        )

    def deliver_all(self) -> list[httpx.Response]:
        responses = self.fake.deliver_pending()
        assert all(r.status_code == 200 for r in responses), [(r.status_code, r.text) for r in responses]
        return responses


class _HttpApiClient:
    """What Api needs from a client (post with json and headers), over real HTTP."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=30, trust_env=False)

    def post(self, path: str, *, json: Any, headers: dict[str, str]) -> httpx.Response:
        return self.http.post(path, json=json, headers=headers)


def seed_stripe_catalog(env: StripeEnv) -> None:
    seed_catalog(env.api)
    env.api(
        PLAN,
        {
            "i": {
                "key": "team",
                "name": "Team",
                "accountKitId": "kit_pro",
                "period": "month",
                "stripePriceId": TEAM_PRICE,
                "includedCredits": "500",
                "quotas": [{"primitive": "email.send", "quota": 5000}],
            }
        },
    )
    with unit_of_work(env.engine) as s:
        upsert_pack(s, env.clock, PackInput("medium", "Medium", 50 * MICRO, 2300, stripe_price_id=MEDIUM_PRICE))
        upsert_pack(s, env.clock, PackInput("small", "Small", 20 * MICRO, 1000, stripe_price_id=SMALL_PRICE))
    env.fake.add_price(PRO_PRICE, 2000, "month")
    env.fake.add_price(TEAM_PRICE, 5000, "month")
    env.fake.add_price(MEDIUM_PRICE, 2300)
    env.fake.add_price(SMALL_PRICE, 1000)


@pytest.fixture(name="stripe_env")
def stripe_env_fixture(db: Database, fake_stripe: FakeStripe) -> Iterator[StripeEnv]:
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    settings = Settings(
        env="test",
        database_url="sqlite://unused",
        stripe_api_key="sk_test_meterkit",
        stripe_webhook_secret=fake_stripe.webhook_secret,
        stripe_connect_webhook_secret=fake_stripe.connect_webhook_secret,
        secrets_keys=[TEST_SECRETS_KEY],
        stripe_api_base=fake_stripe.url,
        public_url="http://127.0.0.1:1",
        default_plan_key="free",
    )
    app = create_app(settings, engine=db.engine, clock=clock)
    with BackgroundServer(app) as server:
        fake_stripe.webhook_url = server.url + "/webhooks/stripe"
        fake_stripe.connect_webhook_url = server.url + "/webhooks/stripe/connect"
        api = Api(cast(Any, _HttpApiClient(server.url)), db)
        with unit_of_work(db.engine) as s:
            _, api.operator_key = create_api_key(s, clock, role="operator", scope=None, name="tests")
        env = StripeEnv(fake_stripe, db, clock, settings, server.url, api)
        seed_stripe_catalog(env)
        yield env
