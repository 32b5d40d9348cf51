"""A late renewal of a period shorter than a month (issue 17, item 5): a 14-day trial
Dec 20 -> Jan 3 on a monthly plan, charges after Jan 3 before the renewal arrives, then the
renewal Jan 3 -> Feb 3. The gap's charges must land in a period that holds their time (main put
them in Jan 20 -> Feb 20) and count against the renewed period's quota once (main accepted 6
of 3). Injected clock, both databases."""

from __future__ import annotations

from typing import Any

from app.core.clock import FrozenClock
from tests.conftest import Api
from tests.fixtures_catalog import PLAN
from tests.periods.test_periods_of_record import Tenant, at, iso, used


def three_a_month(api: Api, clock: FrozenClock) -> Tenant:
    t = Tenant(api, clock)
    plan: dict[str, Any] = {"key": "tiny", "name": "Tiny", "accountKitId": "kit_basic", "period": "month"}
    plan["quotas"] = [{"primitive": "email.send", "quota": 3}]
    assert api(PLAN, {"i": plan})["upsertPlan"]["__typename"] == "Plan"
    return t


def test_trial_renewed_late_gives_its_quota_once(api: Api, clock: FrozenClock) -> None:
    t = three_a_month(api, clock)
    clock.at = at("2026-12-25T09:00:00")
    t.subscribe("tiny", "2026-12-20T00:00:00", "2027-01-03T00:00:00", status="trialing")
    assert t.charge(1)["usage"]["used"] == 1  # the trial's own quota

    # The trial ended; Stripe's renewal is late. The gap is the period Stripe will report:
    # anchored on the trial's end (Jan 3), not on the trial's start day (the 20th).
    clock.at = at("2027-01-04T10:00:00")
    accepted = 0
    for _ in range(5):
        out = t.charge(1)
        if out["__typename"] == "Charged":
            accepted += 1
        else:
            assert out["__typename"] == "QuotaExceeded", out
    assert accepted == 3
    now = t.usage()
    assert now["period"] == {"start": iso("2027-01-03T00:00:00"), "end": iso("2027-02-03T00:00:00")}
    assert used(now) == 3

    # The renewal arrives, naming the period the gap was counted in: no fresh quota.
    clock.at = at("2027-01-05T10:00:00")
    t.subscribe("tiny", "2027-01-03T00:00:00", "2027-02-03T00:00:00")
    for when in ("2027-01-05T10:00:00", "2027-01-21T00:00:00", "2027-02-02T23:59:59"):
        clock.at = at(when)
        out = t.charge(1)
        assert out["__typename"] == "QuotaExceeded", (when, out)
        assert out["used"] == 3
    assert used(t.usage("2027-01-10T00:00:00")) == 3
    listed = [(p["period"]["start"], p["period"]["end"], p["provisional"], p["usage"]) for p in t.periods()["nodes"]]
    assert listed == [
        (iso("2027-01-03T00:00:00"), iso("2027-02-03T00:00:00"), False, [{"primitive": "email.send", "used": 3}]),
        (iso("2026-12-20T00:00:00"), iso("2027-01-03T00:00:00"), False, [{"primitive": "email.send", "used": 1}]),
    ]

    # The next period (Feb 3, Stripe's anchor after the trial) has its own quota again.
    clock.at = at("2027-02-03T00:00:01")
    out = t.charge(1)
    assert out["__typename"] == "Charged" and out["usage"]["used"] == 1, out
    assert t.usage()["period"]["start"] == iso("2027-02-03T00:00:00")


def test_renewal_on_another_anchor_splits_the_gap_when_nothing_was_counted_in_its_time(
    api: Api, clock: FrozenClock
) -> None:
    """The renewal names a period that starts after the predicted one did (Stripe moved the
    anchor): the gap's charges all came before the renewed period, so the predicted period is
    closed where the renewed one starts, and the renewed one starts from zero."""
    t = three_a_month(api, clock)
    clock.at = at("2026-03-10T00:00:00")
    t.subscribe("tiny", "2026-03-10T00:00:00", "2026-04-10T00:00:00")
    clock.at = at("2026-04-12T00:00:00")
    assert [t.charge(1)["__typename"] for _ in range(4)] == ["Charged"] * 3 + ["QuotaExceeded"]
    clock.at = at("2026-04-20T00:00:00")
    t.subscribe("tiny", "2026-04-15T00:00:00", "2026-05-15T00:00:00")
    out = t.charge(1)
    assert out["__typename"] == "Charged" and out["usage"]["used"] == 1, out
    listed = [(p["period"]["start"], p["period"]["end"], p["provisional"], used(p)) for p in t.periods()["nodes"]]
    assert listed == [
        (iso("2026-04-15T00:00:00"), iso("2026-05-15T00:00:00"), False, 1),
        (iso("2026-04-10T00:00:00"), iso("2026-04-15T00:00:00"), False, 3),
        (iso("2026-03-10T00:00:00"), iso("2026-04-10T00:00:00"), False, 0),
    ]


def test_renewal_on_another_anchor_keeps_one_quota_when_the_gap_counted_in_its_time(
    api: Api, clock: FrozenClock
) -> None:
    """Same, but one of the gap's charges fell inside the renewed period's time: the predicted
    period stretches to the renewal's end, so that charge and the ones after the renewal share
    one quota (the renewed period is never given a fresh one beside it)."""
    t = three_a_month(api, clock)
    clock.at = at("2026-03-10T00:00:00")
    t.subscribe("tiny", "2026-03-10T00:00:00", "2026-04-10T00:00:00")
    clock.at = at("2026-04-12T00:00:00")
    assert t.charge(2)["usage"]["used"] == 2
    clock.at = at("2026-04-16T00:00:00")  # inside Apr 15 -> May 15, before the renewal says so
    assert t.charge(1)["usage"]["used"] == 3
    clock.at = at("2026-04-20T00:00:00")
    t.subscribe("tiny", "2026-04-15T00:00:00", "2026-05-15T00:00:00")
    refused = t.charge(1)
    assert refused["__typename"] == "QuotaExceeded" and refused["used"] == 3, refused
    listed = [(p["period"]["start"], p["period"]["end"], p["provisional"], used(p)) for p in t.periods()["nodes"]]
    assert listed == [
        (iso("2026-04-10T00:00:00"), iso("2026-05-15T00:00:00"), False, 3),
        (iso("2026-03-10T00:00:00"), iso("2026-04-10T00:00:00"), False, 0),
    ]
    clock.at = at("2026-05-15T00:00:00")
    assert t.charge(1)["usage"]["used"] == 1  # the next period has its own quota
