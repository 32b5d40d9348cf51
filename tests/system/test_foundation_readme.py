"""The README and the docs stay true: the README's GraphiQL walkthrough runs as written (the docs'
Getting started page includes that same section), the README stays short, and the configuration
page has a table row for every setting."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from app.bootstrap import load_demo_catalog
from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.settings import Settings
from tests.conftest import Api
from tests.paths import ROOT

README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"


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
    charged = False
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
        if "charge(" in block:
            # 3 emails on the team plan (quota 2000), paid from the 20 signup credits.
            assert result["__typename"] == "Charged", result
            assert (result["creditsUsed"], result["creditsRemaining"]) == ("3", "17"), result
            assert result["usage"] == {"primitive": "email.send", "used": 3, "quota": 2000, "remaining": 1997}, result
            charged = True
    assert tenant_id and tenant_key and charged


def test_the_configuration_page_has_a_row_for_every_setting() -> None:
    text = CONFIGURATION.read_text()
    rows = set(re.findall(r"^\| `(METERKIT_[A-Z0-9_]+)` \|", text, re.M))
    missing = [f"METERKIT_{name.upper()}" for name in Settings.model_fields if f"METERKIT_{name.upper()}" not in rows]
    assert not missing, f"docs/configuration.md has no table row for {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_code = text.index("```")
    assert "make run" in text[first_code : first_code + 200] and "make test" in text[first_code : first_code + 200]


def test_readme_stays_short() -> None:
    # What a newcomer needs first; the rest is the documentation site (docs/, mkdocs.yml).
    lines = README.read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines; move detail into docs/"
