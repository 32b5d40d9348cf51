"""The dev Stripe loop follows the gateway (issue 22, item 3), as real processes (real uvicorn, the
real stripe library in the gateway, the stand-in as a real server delivering its own webhooks), on
SQLite and PostgreSQL, with the gateway NOT on port 8000 and METERKIT_PUBLIC_URL unset:

- `meterkit serve --dev-stripe` (what `make run STRIPE=dev` runs): one command, a pack bought;
  the process restarted, the stand-in resumes from its state file and a second pack is bought
  with the same Stripe customer;
- `meterkit dev stripe --memory` beside `meterkit serve`: the stand-in restarted forgets the
  tenant's customer, and the next purchase still goes through on a new one."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from app.devtools.stripe_dev import DEV_API_KEY, DEV_WEBHOOK_SECRET
from tests.conftest import Database
from tests.devtools.processes import meterkit_process, wait_listening
from tests.live import free_port, wait_healthy


def gateway_port() -> int:
    """8123 as the issue asks when it is free here (tests may run side by side), else any but 8000."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8123))
            return 8123
        except OSError:
            pass
    while (port := free_port()) == 8000:
        pass
    return port


class Loop:
    def __init__(self, db: Database, app_port: int, stripe_port: int) -> None:
        self.db = db
        self.app_base = f"http://127.0.0.1:{app_port}"
        self.stripe_base = f"http://127.0.0.1:{stripe_port}"
        self.op_key = "mk_op_" + secrets.token_urlsafe(32)
        self.http = httpx.Client(base_url=self.app_base, timeout=15, trust_env=False)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERKIT_")}  # no METERKIT_PUBLIC_URL
        env.update(PYTHONUNBUFFERED="1", METERKIT_DATABASE_URL=self.db.url, METERKIT_OPERATOR_KEY=self.op_key, **extra)
        return env

    def gql(self, query: str, key: str) -> Any:
        r = self.http.post("/graphql", json={"query": query}, headers={"Authorization": f"Bearer {key}"})
        body = r.json()
        assert r.status_code == 200 and not body.get("errors"), body
        (result,) = body["data"].values()
        return result

    def tenant(self) -> tuple[str, str]:
        tenant = self.gql('mutation { createTenant(input: {name: "Loop"}) { ... on Tenant { id } } }', self.op_key)
        made = self.gql(
            f'mutation {{ createApiKey(tenantId: "{tenant["id"]}") {{ ... on CreatedApiKey {{ secret }} }} }}',
            self.op_key,
        )
        return tenant["id"], made["secret"]

    def buy_small_pack(self, key: str, logs: list[Path]) -> None:
        """purchaseCreditPack -> Pay on the stand-in's page -> back on OUR port -> credited."""
        checkout = self.gql(
            'mutation { purchaseCreditPack(pack: "small") { __typename ... on CheckoutSession { url } '
            "... on UserError { code message } } }",
            key,
        )
        assert checkout["__typename"] == "CheckoutSession", (checkout, *(p.read_text() for p in logs))
        assert checkout["url"].startswith(f"{self.stripe_base}/checkout/cs_"), checkout
        page = httpx.get(checkout["url"], timeout=10, trust_env=False)
        action = re.search(r'<form method="post" action="([^"]+/pay)">', page.text)
        assert page.status_code == 200 and action, page.text
        paid = httpx.post(self.stripe_base + action.group(1), timeout=10, trust_env=False)
        assert paid.status_code == 303, paid.text
        back = paid.headers["location"]
        # The return page follows the gateway's own port, not a default :8000.
        assert back.startswith(f"{self.app_base}/billing/pack/success?session_id=cs_"), back
        deadline = time.monotonic() + 20
        while 'data-state="credited"' not in (shown := httpx.get(back, timeout=10, trust_env=False)).text:
            assert 'data-state="pending"' in shown.text, shown.text
            assert time.monotonic() < deadline, (shown.text, *(p.read_text() for p in logs))
            time.sleep(0.1)
        assert "20 credits from the small pack are in your balance" in shown.text

    def balance(self, key: str) -> str:
        return str(self.gql("{ status { credits { balance } } }", key)["credits"]["balance"])  # its own wallet

    def customer(self, tenant_id: str) -> str | None:
        with self.db.engine.connect() as c:
            return c.execute(text("SELECT stripe_customer_id FROM tenant WHERE id = :t"), {"t": tenant_id}).scalar()


def test_one_command_buys_on_another_port_and_again_after_a_restart(db: Database, tmp_path: Path) -> None:
    loop = Loop(db, gateway_port(), free_port())
    state, log = tmp_path / "stand-in.json", tmp_path / "serve.log"
    args = ["serve", "--port", loop.app_base.rsplit(":", 1)[1], "--dev-stripe"]
    args += ["--dev-stripe-port", loop.stripe_base.rsplit(":", 1)[1], "--dev-stripe-state", str(state)]

    with meterkit_process(args, loop.env(), log) as proc:
        wait_healthy(proc, loop.app_base, 60, log.read_text)
        tid, key = loop.tenant()
        loop.buy_small_pack(key, [log])
        assert loop.balance(key) == "40"  # 20 signup + 20 bought
    customer = loop.customer(tid)
    assert customer and customer.startswith("cus_")
    kept = json.loads(state.read_text())
    assert customer in kept["objects"] and kept["undelivered"] == []  # every webhook was delivered
    assert not list(tmp_path.glob("stand-in.json.*"))  # no temporary file left behind

    with meterkit_process(args, loop.env(), log) as proc:  # both restarted: the stand-in resumes
        wait_healthy(proc, loop.app_base, 60, log.read_text)
        assert "(resumed)" in log.read_text()
        loop.buy_small_pack(key, [log])
        assert loop.balance(key) == "60"
    assert loop.customer(tid) == customer  # the same Stripe customer: the stand-in still knew it


def test_a_stand_in_that_forgot_the_customer_is_no_dead_end(db: Database, tmp_path: Path) -> None:
    loop = Loop(db, gateway_port(), free_port())
    app_log, stripe_log = tmp_path / "serve.log", tmp_path / "dev-stripe.log"
    gateway_env = loop.env(
        METERKIT_STRIPE_API_BASE=loop.stripe_base,
        METERKIT_STRIPE_API_KEY=DEV_API_KEY,
        METERKIT_STRIPE_WEBHOOK_SECRET=DEV_WEBHOOK_SECRET,
    )
    stand_in = ["dev", "stripe", "--port", loop.stripe_base.rsplit(":", 1)[1], "--memory"]
    stand_in += ["--webhook-url", f"{loop.app_base}/webhooks/stripe"]
    serve = ["serve", "--port", loop.app_base.rsplit(":", 1)[1]]
    logs = [app_log, stripe_log]

    with meterkit_process(serve, gateway_env, app_log) as app:
        wait_healthy(app, loop.app_base, 60, app_log.read_text)
        with meterkit_process(stand_in, loop.env(), stripe_log) as stripe:
            wait_listening(stripe, loop.stripe_base, stripe_log)
            tid, key = loop.tenant()
            loop.buy_small_pack(key, logs)
        first = loop.customer(tid)
        assert first and loop.balance(key) == "40"

        with meterkit_process(stand_in, loop.env(), stripe_log) as stripe:  # restarted, remembering nothing
            wait_listening(stripe, loop.stripe_base, stripe_log)
            loop.buy_small_pack(key, logs)
        replaced = loop.customer(tid)
        assert replaced and replaced != first  # a new customer, stored on the tenant
        assert loop.balance(key) == "60"
        assert f"Stripe no longer knows customer {first}" in app_log.read_text()
