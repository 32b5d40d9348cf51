"""Concurrent control-plane writes. On PostgreSQL (READ COMMITTED) two writers can both see
"no such row" and both insert; the loser's unique violation must become the answer it would
have got had it come second (the same plan; a typed error), never "Unexpected error."."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlmodel import Session

from app.account_kits.service import KitInput, upsert_account_kit
from app.core.clock import FrozenClock
from app.core.errors import DomainError
from app.graphql.context import Context
from app.organizations.models import DEFAULT_ORG_ID
from app.plans.repository import PlanRepository
from app.plans.service import PlanInput, upsert_plan
from app.settings import Settings
from app.tenants.repository import TenantRepository
from app.tenants.service import TenantInput, create_tenant
from tests.conftest import Api, Database, count_rows
from tests.fixtures_catalog import seed_catalog


def _race(
    db: Database, clock: FrozenClock, read: Callable[[Session], Any], write: Callable[[Session], Any]
) -> list[Any]:
    """Two writers that both read before either writes (PostgreSQL), or simply two writers (SQLite
    serializes them at BEGIN IMMEDIATE, so there a barrier would deadlock)."""
    barrier = threading.Barrier(2, timeout=10)
    first_try: set[int] = set()

    def body(session: Session) -> Any:
        read(session)
        me = threading.get_ident()
        if db.backend == "postgres" and me not in first_try:
            first_try.add(me)
            barrier.wait()
        return write(session)

    def one() -> Any:
        ctx = Context(engine=db.engine, settings=Settings(env="test"), clock=clock, principal=None, scope=None)
        try:
            return asyncio.run(ctx.write(body))
        except DomainError as exc:
            return exc

    with ThreadPoolExecutor(2) as pool:
        return [f.result() for f in [pool.submit(one), pool.submit(one)]]


def test_concurrent_upserts_of_a_new_plan_both_succeed(api: Api, clock: FrozenClock) -> None:
    seed_catalog(api)
    data = PlanInput(key="race", name="Race", account_kit_id="kit_pro", quotas={"email.send": 10})
    results = _race(
        api.db,
        clock,
        lambda s: PlanRepository(s).get(DEFAULT_ORG_ID, "race"),
        lambda s: upsert_plan(s, clock, data).key,
    )
    assert results == ["race", "race"]
    assert count_rows(api.db.engine, "plan", "plan_quota") == {"plan": 3, "plan_quota": 4}


def test_concurrent_upserts_of_a_new_kit_both_succeed(api: Api, clock: FrozenClock) -> None:
    data = KitInput(key="kit_race", name="Race", allowed_primitives=["email.*"])
    results = _race(api.db, clock, lambda s: None, lambda s: upsert_account_kit(s, clock, data).key)
    assert results == ["kit_race", "kit_race"]
    assert count_rows(api.db.engine, "account_kit") == {"account_kit": 1}


def test_concurrent_tenants_with_one_external_id(api: Api, clock: FrozenClock) -> None:
    data = TenantInput(name="Twin", external_id="cus-twin")
    results = _race(
        api.db,
        clock,
        lambda s: TenantRepository(s).by_external_id(DEFAULT_ORG_ID, "cus-twin"),
        lambda s: create_tenant(s, clock, data, default_plan_key="free", signup_micro=0).id,
    )
    created = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, DomainError)]
    assert len(created) == 1 and len(refused) == 1, results
    assert refused[0].code == "VALIDATION_FAILED" and "externalId" in refused[0].message
    assert count_rows(api.db.engine, "tenant") == {"tenant": 1}
