"""Long jobs show progress on a terminal and nothing in a pipe: `meterkit stripe reconcile`
reports each phase's count as it goes; `meterkit reconcile --all` shows a spinner."""

from __future__ import annotations

import io

from rich.console import Console

from app.cli_client.progress import phases, working
from app.integrations.stripe import service
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)

BUY = """mutation { purchaseCreditPack(pack: "medium") { ... on CheckoutSession { sessionId } } }"""


def test_stripe_reconcile_reports_every_phase(stripe_env: StripeEnv) -> None:
    env = stripe_env
    a, b = env.tenant("A"), env.tenant("B")
    env.subscribe(a)
    env.subscribe(b)
    session_id = env.api(BUY, key=env.api.tenant_key(a))["purchaseCreditPack"]["sessionId"]
    env.fake.complete_checkout(session_id)
    ticks: list[tuple[str, int, int]] = []
    report = service.reconcile(env.engine, env.gateway(), env.settings, env.clock, progress=lambda *t: ticks.append(t))
    assert (report.subscriptions_repaired, report.packs_granted) == (2, 1)
    phases_seen = [p for p, _, _ in ticks]
    phases = ["subscriptions", "checkout sessions", "expired checkout sessions", "invoices"]
    assert list(dict.fromkeys(phases_seen)) == phases
    for phase in phases:
        mine = [(done, total) for p, done, total in ticks if p == phase]
        total = mine[0][1]
        assert [d for d, _ in mine] == list(range(total + 1))  # 0, then one tick per item
        assert all(t == total for _, t in mine)
    assert [(d, t) for p, d, t in ticks if p == "subscriptions"][-1] == (2, 2)
    assert [(d, t) for p, d, t in ticks if p == "checkout sessions"][-1][1] >= 1


def test_progress_draws_on_a_terminal_and_stays_silent_in_a_pipe() -> None:
    terminal = io.StringIO()
    with phases(Console(file=terminal, force_terminal=True, width=100)) as tick:
        for done in range(4):
            tick("subscriptions", done, 3)
        tick("invoices", 0, 0)
    drawn = terminal.getvalue()
    assert "subscriptions" in drawn and "3/3" in drawn and "invoices" in drawn

    pipe = io.StringIO()
    with phases(Console(file=pipe, force_terminal=False)) as tick:
        tick("subscriptions", 1, 3)
    with working("recomputing", Console(file=pipe, force_terminal=False)):
        pass
    assert pipe.getvalue() == ""

    spun = io.StringIO()
    with working("recomputing every balance", Console(file=spun, force_terminal=True, width=100)):
        pass
    assert "recomputing every balance" in spun.getvalue()
