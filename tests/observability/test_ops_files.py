"""The example Prometheus config, alert rules and Grafana dashboard (docs/ops/) parse, have the
structure Prometheus and Grafana expect, and name only metrics a real scrape exposes (promtool is
not installed here: Debian's `prometheus` package is the whole server)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import yaml

from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.devtools.serving import BackgroundServer
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.conftest import Database
from tests.observability.scrape import names, scrape
from tests.paths import ROOT

OPS = ROOT / "docs" / "ops"
_METRIC = re.compile(r"\bmeterkit_[a-z0-9_]+")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _exposed(db: Database) -> set[str]:
    clock = FrozenClock(datetime.now(UTC))
    settings = Settings(env="test", database_url="sqlite://unused", metrics_enabled=True)
    with BackgroundServer(create_app(settings, engine=db.engine, clock=clock)) as server:
        with unit_of_work(db.engine) as s:
            _, key = create_api_key(s, clock, role="operator", scope=None, name="tests")
        # One request first, so the request histogram has a series.
        scrape(server.url, key)
        return names(scrape(server.url, key))


def _known(metric: str, exposed: set[str]) -> bool:
    """A family with no sample yet (a counter never incremented) is still declared: accept its
    samples' names from the families prometheus-client declares."""
    from prometheus_client import REGISTRY

    declared = {m.name for m in REGISTRY.collect()}
    base = metric
    for suffix in _SUFFIXES:
        if metric.endswith(suffix):
            base = metric[: -len(suffix)]
    return metric in exposed or base in declared or metric in declared


def test_scrape_config_and_rules_parse_and_name_real_metrics(db: Database) -> None:
    config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
    assert config["rule_files"] == ["alerts.yml"]
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {"MeterkitAlertOutboxStuck", "MeterkitRefusalRateSpike", "MeterkitLedgerDrift"} <= {
        r["alert"] for r in alerts
    }
    for r in alerts:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"} and r["expr"].strip()
        assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]
    exposed = _exposed(db)
    named = {m for r in alerts for m in _METRIC.findall(r["expr"])}
    assert named and all(_known(m, exposed) for m in named), named - exposed


def test_the_dashboard_loads_and_names_real_metrics(db: Database) -> None:
    dash = json.loads(Path(OPS / "grafana-dashboard.json").read_text())
    assert dash["title"] and dash["uid"] and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    named = {m for e in exprs for m in _METRIC.findall(e)}
    exposed = _exposed(db)
    assert all(_known(m, exposed) for m in named), {m for m in named if not _known(m, exposed)}
    # Every metric of the operations page's table is on the dashboard or in the rules.
    page = (ROOT / "docs" / "operations" / "observability.md").read_text()
    documented = set(_METRIC.findall(page))
    assert {"meterkit_charges_total", "meterkit_alert_outbox_oldest_pending_seconds"} <= documented
    assert all(_known(m, exposed) for m in documented if not m.endswith("_")), documented
