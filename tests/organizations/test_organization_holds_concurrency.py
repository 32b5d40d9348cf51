"""The organization's row under concurrency (PostgreSQL's row locks; SQLite serializes writers): many
end users of one organization reserving, charging, settling and releasing at once never overspend
its balance, never deadlock (end users' rows first, the organization's last), and leave its
`reserved` equal to the open holds it pays for (the books check after every test)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from app.core.auth import TenantScope
from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.credits import ledger
from app.metering import commands
from app.metering.errors import OrganizationCreditsExhausted
from app.metering.types import Charged, HoldView, MeterRequest
from tests.conftest import Api
from tests.organizations.test_organization_holds import _org, _status, _user

BUFFER = 10_000_000


def test_concurrent_reserves_of_many_end_users_hold_exactly_what_the_organization_has(api: Api) -> None:
    org_id, key = _org(api, "c")
    users = [_user(api, key, "c") for _ in range(8)]
    clock = FrozenClock(datetime(2026, 7, 1, 12, 0, tzinfo=UTC))
    with unit_of_work(api.db.engine) as s:  # 20 signup + 80: 100 credits, room for exactly 20 holds of 5
        ledger.grant(s, TenantScope(org_id), clock, amount=80_000_000, source="adjustment", grant_key="top")
    engine = api.db.engine

    def reserve(n: int) -> HoldView | Exception:
        req = MeterRequest("research.thorough", f"job-{n}")
        try:
            return commands.reserve(
                engine, clock, TenantScope(users[n % 8]), req, negative_buffer=BUFFER, ttl_seconds=3600
            )
        except OrganizationCreditsExhausted as exc:
            return exc

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(reserve, range(40)))
    holds = [(n, o) for n, o in enumerate(outcomes) if isinstance(o, HoldView)]
    assert len(holds) == 20 and sum(isinstance(o, OrganizationCreditsExhausted) for o in outcomes) == 20
    assert _status(api, key) == {"balance": 100, "reserved": 100, "available": 0}

    # Half settled, half released, while other end users' work already done is charged: no deadlock,
    # and every settled hold is paid once by the organization.
    def close(item: tuple[int, HoldView]) -> object:
        n, hold = item
        scope = TenantScope(users[n % 8])
        if n % 2:
            return commands.settle(engine, clock, scope, hold.id, None, negative_buffer=BUFFER, api_key_id=None)
        commands.charge(
            engine,
            clock,
            TenantScope(users[(n + 1) % 8]),
            MeterRequest("email.send", f"mail-{n}"),
            negative_buffer=BUFFER,
        )
        return commands.release(engine, clock, scope, hold.id)

    with ThreadPoolExecutor(8) as pool:
        closed = list(pool.map(close, holds))
    settled = sum(isinstance(c, Charged) for c in closed)
    released = sum(isinstance(c, HoldView) and c.status == "released" for c in closed)
    mails = len(holds) - settled
    assert settled + released == 20
    # Each settle 5, each mail 1: all of it on the organization, nothing held any more.
    assert _status(api, key) == {
        "balance": 100 - 5 * settled - mails,
        "reserved": 0,
        "available": 100 - 5 * settled - mails,
    }
