"""The docs' "Buying credits on one machine" walkthrough (docs/stripe.md), run as written (issue 8, point 4):
`meterkit dev stripe` and `meterkit serve` as real processes (real uvicorn, the Stripe stand-in
as a real server, webhooks delivered by it), on SQLite and PostgreSQL:
402 -> purchaseCreditPack -> Pay on the stand-in's Checkout page -> webhook -> credits."""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import httpx

from app.devtools.stripe_dev import DEV_API_KEY, DEV_WEBHOOK_SECRET
from tests.conftest import Database
from tests.devtools.processes import meterkit_process, wait_listening
from tests.live import free_port, wait_healthy
from tests.paths import ROOT

STRIPE_PAGE = ROOT / "docs" / "stripe.md"


def _section() -> str:
    m = re.search(r"<!-- devloop:start -->(.*?)<!-- devloop:end -->", STRIPE_PAGE.read_text(), re.S)
    assert m, "docs/stripe.md has no devloop section"
    return m.group(1)


def test_the_dev_loop_runs_as_written(db: Database, tmp_path: Path) -> None:
    section = _section()
    blocks = re.findall(r"```graphql\n(.*?)```", section, re.S)
    curl = re.search(r"curl -s -X POST (\S+) .*?-d '(\{.*?\})'", section, re.S)
    assert len(blocks) == 5 and curl, "the devloop section changed shape: update this test with it"

    app_port, stripe_port = free_port(), free_port()
    app_base, stripe_base = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{stripe_port}"
    op_key = "mk_op_" + secrets.token_urlsafe(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERKIT_")}
    env.update(
        PYTHONUNBUFFERED="1",
        METERKIT_DATABASE_URL=db.url,
        METERKIT_OPERATOR_KEY=op_key,
        METERKIT_PUBLIC_URL=app_base,
        # What `make run STRIPE=dev` sets (the table in docs/stripe.md):
        METERKIT_STRIPE_API_BASE=stripe_base,
        METERKIT_STRIPE_API_KEY=DEV_API_KEY,
        METERKIT_STRIPE_WEBHOOK_SECRET=DEV_WEBHOOK_SECRET,
    )
    stripe_args = ["dev", "stripe", "--port", str(stripe_port), "--webhook-url", f"{app_base}/webhooks/stripe"]
    stripe_args += ["--state", str(tmp_path / "dev-stripe.json")]
    stripe_log, app_log = tmp_path / "dev-stripe.log", tmp_path / "serve.log"
    with (
        meterkit_process(stripe_args, env, stripe_log) as stripe_proc,
        meterkit_process(["serve", "--port", str(app_port)], env, app_log) as app_proc,
    ):
        wait_listening(stripe_proc, stripe_base, stripe_log)
        wait_healthy(app_proc, app_base, 60, app_log.read_text)
        http = httpx.Client(base_url=app_base, timeout=15, trust_env=False)

        def gql(block: str, key: str) -> Any:
            r = http.post("/graphql", json={"query": block}, headers={"Authorization": f"Bearer {key}"})
            body = r.json()
            assert r.status_code == 200 and not body.get("errors"), (block, body)
            (result,) = body["data"].values()
            return result

        # 1. A tenant and its key.
        tenant = gql(blocks[0], op_key)
        assert tenant["__typename"] == "Tenant" and tenant["credits"]["balance"] == "20", tenant
        created = gql(blocks[1].replace("TENANT_ID", tenant["id"]), op_key)
        tenant_key = created["secret"]
        # 2. Spend the signup credits and the buffer.
        spent = gql(blocks[2], tenant_key)
        assert [c["__typename"] for c in spent] == ["Charged"] * 3 and spent[-1]["creditsRemaining"] == "-10", spent
        # 3. The 402, with the packs and how to buy them.
        url, payload = curl.group(1), json.loads(curl.group(2))
        assert url == "http://127.0.0.1:8000/v1/charge"
        r = http.post("/v1/charge", json=payload, headers={"Authorization": f"Bearer {tenant_key}"})
        assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credits", r.text
        packs = {p["key"]: p for p in r.json()["error"]["packs"]}
        assert packs["small"]["purchase"] == {"method": "POST", "path": "/v1/billing/topup", "body": {"pack": "small"}}
        # 4. Buy the small pack: a Checkout Session on the stand-in.
        checkout = gql(blocks[3], tenant_key)
        assert checkout["__typename"] == "CheckoutSession" and checkout["url"].startswith(stripe_base), checkout
        # 5. Pay on its page; it sends the browser back to our success page.
        page = httpx.get(checkout["url"], timeout=10, trust_env=False)
        action = re.search(r'<form method="post" action="([^"]+/pay)">', page.text)
        assert page.status_code == 200 and action, page.text
        paid = httpx.post(stripe_base + action.group(1), timeout=10, trust_env=False)
        assert paid.status_code == 303, paid.text
        back = paid.headers["location"]
        assert back.startswith(f"{app_base}/billing/pack/success?session_id=cs_"), back
        deadline = time.monotonic() + 20
        while True:
            shown = httpx.get(back, timeout=10, trust_env=False)
            assert shown.status_code == 200, shown.text
            if 'data-state="credited"' in shown.text:
                break
            assert 'data-state="pending"' in shown.text, shown.text
            assert time.monotonic() < deadline, (shown.text, stripe_log.read_text(), app_log.read_text())
            time.sleep(0.1)
        assert "20 credits from the small pack are in your balance" in shown.text
        # 6. The credits are there: -10 + 20.
        status = gql(blocks[4], tenant_key)
        assert status["credits"] == {"balance": "10", "available": "10"}, status
