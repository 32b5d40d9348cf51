"""SIGKILL during Stripe webhook handling (issue 17, item 8), on SQLite and PostgreSQL: the
server is killed with the event's transaction open (the inbox row claimed and half the effect
written, tests/crash_points.py); nothing of it is left, and redelivering the same event to a
restarted server applies it exactly once."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.core.db import normalize_url
from tests.conftest import ALL_TABLES, Database, count_rows
from tests.live import free_port, server_output, start_subprocess
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)

TABLES = (*ALL_TABLES, "usage_event", "usage_counter")


def only(events: list[dict[str, Any]], type_: str) -> dict[str, Any]:
    found = [e for e in events if e["type"] == type_]
    assert len(found) == 1, [e["type"] for e in events]
    return found[0]


def stripe_env_vars(env: StripeEnv) -> dict[str, str]:
    return {
        "METERKIT_STRIPE_API_KEY": "sk_test_meterkit",
        "METERKIT_STRIPE_WEBHOOK_SECRET": env.fake.webhook_secret,
        "METERKIT_STRIPE_API_BASE": env.fake.url,
        "METERKIT_DEFAULT_PLAN_KEY": "free",
    }


def transaction_open(db: Database) -> bool:
    """Does another process hold a write transaction open in the test's database right now?"""
    if db.backend == "sqlite":
        conn = sqlite3.connect(db.url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
            return True
        finally:
            conn.close()
    with db.engine.connect() as c:
        return bool(
            c.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        )


def kill_mid_handling(env: StripeEnv, event_id: str, point: str, tmp_path: Path) -> None:
    """Deliver the event to a server that stops inside its transaction at `point`; SIGKILL it there."""
    marker = tmp_path / f"crash-{point}"
    port = free_port()
    proc = start_subprocess(
        normalize_url(env.db.url),
        port,
        factory="tests.crash_points:create_app",
        METERKIT_TEST_CRASH_AT=point,
        METERKIT_TEST_CRASH_FILE=str(marker),
        **stripe_env_vars(env),
    )
    answers: list[Any] = []
    try:
        env.fake.webhook_url = f"http://127.0.0.1:{port}/webhooks/stripe"

        def deliver() -> None:
            try:
                answers.extend(env.fake.deliver(event_id))
            except httpx.HTTPError as exc:  # the server died under the request
                answers.append(exc)

        sender = threading.Thread(target=deliver)
        sender.start()
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, f"crash point {point} never reached:\n{server_output(proc)}"
            assert proc.poll() is None, server_output(proc)
            time.sleep(0.02)
        assert transaction_open(env.db)  # the event's transaction is open, its writes uncommitted
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
        sender.join(30)
        assert len(answers) == 1 and isinstance(answers[0], httpx.HTTPError), answers  # never acknowledged
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def settled(db: Database) -> None:
    """PostgreSQL ends a killed client's backend (rolling back) when it reads the closed socket."""
    deadline = time.monotonic() + 30
    while transaction_open(db):
        assert time.monotonic() < deadline, "the killed server's transaction never ended"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("event_type", "point"),
    [("customer.subscription.created", "set_subscription"), ("invoice.paid", "grant")],
)
def test_sigkill_mid_webhook_leaves_nothing_and_the_redelivery_applies_once(
    stripe_env: StripeEnv, tmp_path: Path, event_type: str, point: str
) -> None:
    env = stripe_env
    t = env.tenant()
    env.subscribe(t)
    pending = env.fake.pending_events()
    env.fake.deliver(only(pending, "customer.created")["id"])
    event = only(pending, event_type)
    rows, state = count_rows(env.engine, *TABLES), env.state(t)

    kill_mid_handling(env, event["id"], point, tmp_path)
    settled(env.db)
    # Nothing half-applied: no inbox row, no plan, no subscription, no grant, no balance moved.
    assert count_rows(env.engine, *TABLES) == rows
    assert env.state(t) == state
    assert event["id"] not in [row[0] for row in env.inbox()]

    # Stripe redelivers (the event was never acknowledged): a restarted server applies it once.
    port = free_port()
    proc = start_subprocess(normalize_url(env.db.url), port, **stripe_env_vars(env))
    try:
        env.fake.webhook_url = f"http://127.0.0.1:{port}/webhooks/stripe"
        first, again = env.fake.deliver(event["id"], times=2)
        assert (first.status_code, again.status_code) == (200, 200), server_output(proc)
        assert first.json()["outcome"] == "applied" and again.json()["duplicate"] is True
        env.deliver_all()  # the other pending event too (created <-> paid), in any state
    finally:
        proc.kill()
        proc.wait(10)
    after = env.state(t)
    assert (after["plan"], after["status"]) == ("pro", "active")
    assert [g[1] for g in after["grants"] if g[0] == "plan"] == [200_000_000]  # one monthly grant
    assert after["balance"] == state["balance"] + 200_000_000
    assert count_rows(env.engine, "stripe_event")["stripe_event"] == rows["stripe_event"] + 2
