"""Fuzz REST /v1 from its own /openapi.json with schemathesis, against a live uvicorn: every
operation, valid and invalid inputs, with a tenant key and with an operator key plus
X-Tenant-Id. No answer is a 5xx, every answer matches the document (status, content type,
body schema), invalid input is refused, and the books still balance afterwards (checked here
and by conftest's after-test reconcile)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.db import unit_of_work
from app.credits.service import reconcile
from tests.fixtures_catalog import SET_SUB
from tests.rest_harness import Rest
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)

EXAMPLES = 12  # per operation and generation mode: the whole run stays well under a minute
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(name="rest")
def rest_fixture(stripe_env: StripeEnv) -> Iterator[Rest]:
    """A tenant on Pro, on the app served with Stripe pointed at the local fake (so buying works too)."""
    env = stripe_env
    tid = env.tenant()
    env.api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    with httpx.Client(base_url=env.url, timeout=30, trust_env=False) as http:
        yield Rest(env.api, http, env.url, tid, env.api.tenant_key(tid), env.clock)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_fuzz_the_rest_api_from_its_openapi_document(rest: Rest, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(rest.url + "/openapi.json")
    doc = rest.http.get("/openapi.json").json()
    # A hold that exists, so settle/release also reach past the id check now and then.
    hold = rest.post("/v1/reserve", {"primitive": "research.thorough", "idempotency_key": "fuzz-hold"}).json()
    calls: dict[str, int] = {}
    statuses: set[int] = set()
    checks = [*CHECKS, negative_data_rejection] if mode == GenerationMode.NEGATIVE else CHECKS

    def fuzz(operation: Any, label: str) -> None:
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=operation.as_strategy(generation_mode=mode),
            as_=st.sampled_from(["tenant", "operator"]),
            real_hold=st.booleans(),
        )
        def run(case: Any, as_: str, real_hold: bool) -> None:
            # The key kinds are ours to pick: a generated X-Tenant-Id would only ever name a tenant that
            # does not exist (tests/rest/test_rest.py covers that answer).
            case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "x-tenant-id"}
            if real_hold and case.path_parameters and "hold_id" in case.path_parameters:
                case.path_parameters["hold_id"] = hold["hold_id"]
            response = case.call(base_url=rest.url, headers=rest.headers(as_))
            calls[label] = calls.get(label, 0) + 1
            statuses.add(response.status_code)
            case.validate_response(response, checks=checks)

        run()

    for path, ops in doc["paths"].items():
        for method in ops:
            fuzz(schema[path][method.upper()], f"{method.upper()} {path}")
    assert len(calls) == 13 and all(n >= 1 for n in calls.values()), calls
    assert all(s < 500 for s in statuses), statuses
    if mode == GenerationMode.POSITIVE:
        assert 200 in statuses
    else:
        assert 400 in statuses
    with unit_of_work(rest.api.db.engine, write=False) as s:
        assert reconcile(s).drifted == []
