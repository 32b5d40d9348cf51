"""The REST page of the docs (docs/rest.md) stays true: every curl in it runs, in order, against a
live server (Stripe pointed at the local fake, the demo Pro kit), and answers the status and the
body the page shows. Ids, URLs and timestamps differ per run; every other value, every key and
every status must match (a list on the page may be shortened to its first items)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from app.account_kits.service import upsert_account_kit
from app.bootstrap import DEMO_KITS
from app.core.db import unit_of_work
from tests.paths import ROOT
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)

REST_PAGE = ROOT / "docs" / "rest.md"
# Values that differ per run (ids, URLs, instants); their keys and types must still match.
VARYING = {
    "request_id",  # each error's own (X-Request-Id)
    "tenant_id",
    "event_id",
    "job_id",
    "hold_id",
    "session_id",
    "checkout_url",
    "stripe_subscription_id",
    "next_cursor",
    "id",
    "created_at",
    "expires_at",
    "updated_at",
    "start",
    "end",
    "reference",
}


@dataclass
class Step:
    command: str
    status: int
    body: Any


def steps() -> list[Step]:
    text = REST_PAGE.read_text()
    m = re.search(r"<!-- rest:start -->(.*?)<!-- rest:end -->", text, re.S)
    assert m, "docs/rest.md has no rest:start/rest:end section"
    pairs = re.findall(r"```sh\n(.*?)```\n+```json\n(.*?)```", m.group(1), re.S)
    out = []
    for sh, body in pairs:
        status = re.search(r"^# HTTP (\d{3})", sh, re.M)
        command = " ".join(line.rstrip("\\").strip() for line in sh.splitlines() if not line.startswith("#"))
        out.append(Step(command, int(status.group(1)) if status else 200, json.loads(body, parse_float=Decimal)))
    return out


def run_curl(command: str, env: dict[str, str]) -> httpx.Response:
    for name, value in env.items():
        command = command.replace(f"${name}", value)
    args = shlex.split(command)
    assert args[0] == "curl", command
    method, headers, data, url = "GET", {}, None, None
    it = iter(args[1:])
    for arg in it:
        if arg == "-X":
            method = next(it)
        elif arg == "-H":
            name, _, value = next(it).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data, method = next(it), "POST" if method == "GET" else method
        elif arg == "-s":
            continue
        else:
            assert url is None and arg.startswith("http"), command
            url = arg
    assert url is not None, command
    return httpx.request(method, url, headers=headers, content=data, timeout=30, trust_env=False)


def same(shown: Any, got: Any, where: str = "") -> None:
    if isinstance(shown, dict):
        assert isinstance(got, dict) and set(shown) == set(got), (where, shown, got)
        for k in shown:
            if k in VARYING:
                assert type(shown[k]) is type(got[k]), (f"{where}.{k}", shown[k], got[k])
            else:
                same(shown[k], got[k], f"{where}.{k}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and len(shown) <= len(got), (where, shown, got)
        for i, item in enumerate(shown):
            same(item, got[i], f"{where}[{i}]")
    else:
        assert shown == got and type(shown) is type(got), (where, shown, got)


def test_the_rest_page_runs_as_written(stripe_env: StripeEnv) -> None:
    env = stripe_env
    with unit_of_work(env.engine) as s:
        upsert_account_kit(s, env.clock, DEMO_KITS[1])  # what `make run` loads for Pro
    tenant = env.tenant("Acme Inc.")
    variables = {
        "METERKIT_URL": env.url,
        "METERKIT_API_KEY": env.api.tenant_key(tenant),
        "OPERATOR_KEY": env.api.operator_key,
        "TENANT_ID": tenant,
    }
    shown = steps()
    assert len(shown) >= 16
    for step in shown:
        r = run_curl(step.command, variables)
        got = json.loads(r.text, parse_float=Decimal)
        assert r.status_code == step.status, (step.command, r.text)
        same(step.body, got, step.command)
        if "hold_id" in got:
            variables["HOLD_ID"] = got["hold_id"]
        if "session_id" in got and got["session_id"]:
            # The buyer pays at the Checkout URL; Stripe's webhooks follow.
            env.fake.complete_checkout(got["session_id"])
            env.deliver_all()
