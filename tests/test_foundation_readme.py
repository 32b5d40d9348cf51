"""The README stays true: its GraphiQL walkthrough runs as written, and its configuration table
names every setting."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.bootstrap import load_demo_catalog
from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.settings import Settings
from tests.conftest import Api

README = Path(__file__).resolve().parents[1] / "README.md"


def _walkthrough() -> list[str]:
    text = README.read_text()
    m = re.search(r"<!-- walkthrough:start -->(.*?)<!-- walkthrough:end -->", text, re.S)
    assert m, "README has no walkthrough section"
    return re.findall(r"```graphql\n(.*?)```", m.group(1), re.S)


@pytest.fixture
def clock() -> FrozenClock:
    # The walkthrough runs today, as a reader would: its dates are computed from today, never fixed.
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


def test_readme_walkthrough_runs_as_written(api: Api, clock: FrozenClock) -> None:
    with unit_of_work(api.db.engine) as s:
        load_demo_catalog(s, clock)  # what `make run` loads
    blocks = _walkthrough()
    assert len(blocks) >= 6
    assert not re.search(r"\b20\d\d-\d\d-\d\d", "".join(blocks)), "the walkthrough has a fixed date"
    period_end = (clock.now() + timedelta(days=30)).replace(hour=0, minute=0, second=0)
    tenant_id = tenant_key = None
    for block in blocks:
        doc = block.replace("TENANT_ID", tenant_id or "TENANT_ID")
        doc = doc.replace("PERIOD_END", period_end.isoformat().replace("+00:00", "Z"))
        as_tenant = "<tenant key>" in block
        key = tenant_key if as_tenant else api.operator_key
        assert key, "a tenant-key step comes before the key is created"
        body = api(doc, key=key, expect_errors=True)
        if "upsertPlan" in block and as_tenant:
            assert body["data"] is None and body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body
            continue
        assert not body.get("errors"), (block, body)
        (result,) = body["data"].values()
        if isinstance(result, dict) and "__typename" in result:
            assert result["__typename"] not in ("ValidationError", "NotFoundError", "ConflictError"), (block, result)
        if "createTenant" in block:
            tenant_id = result["id"]
            assert result["plan"] == {"key": "free"}
        if "createApiKey" in block:
            tenant_key = result["secret"]
        if "setSubscription" in block:
            assert datetime.fromisoformat(result["subscription"]["currentPeriodEnd"]) == period_end
        if "viewer" in block:
            assert result["id"] == tenant_id
            assert result["plan"]["key"] == "team" and result["accountKit"]["key"] == "kit_team"
            assert result["subscription"]["status"] == "active"
    assert tenant_id and tenant_key


def test_readme_configuration_table_names_every_setting() -> None:
    text = README.read_text()
    missing = [f"METERKIT_{name.upper()}" for name in Settings.model_fields if f"`METERKIT_{name.upper()}`" not in text]
    assert not missing, f"README configuration table lacks {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_code = text.index("```")
    assert "make run" in text[first_code : first_code + 200] and "make test" in text[first_code : first_code + 200]
