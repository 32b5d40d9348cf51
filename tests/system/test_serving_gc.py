"""Issue 17 (area abuse): a serving process raises the cyclic collector's thresholds after
startup. With the defaults (700, 10, 10), 2,000 subscriptions of one tenant set off full
collections of 100-200 ms every few seconds, and another tenant's charge p99 went from 7-12 ms to
94-236 ms (`python -m bench.attack`, attack a; docs/benchmarks.md "One tenant under attack" and
docs/decisions/0002-gc-freeze-and-thresholds.md). Speed is measured there; here, that the serving
app does set them, and that tests (many apps in one process) do not."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from app.main import GC_THRESHOLDS, create_app
from app.settings import Settings
from tests.conftest import Database


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_a_serving_process_raises_the_collector_thresholds(db: Database) -> None:
    gc.set_threshold(700, 10, 10)  # Python's defaults
    settings = Settings(env="development", database_url="sqlite://unused", webhook_worker_seconds=0)
    with TestClient(create_app(settings, engine=db.engine)) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_threshold() == GC_THRESHOLDS
    # Young collections far rarer than the default; full ones 100 middle passes apart.
    assert GC_THRESHOLDS[0] >= 10 * 700 and GC_THRESHOLDS[2] >= 100


@pytest.mark.usefixtures("restored_gc")
def test_tests_keep_the_default_thresholds(db: Database) -> None:
    gc.set_threshold(700, 10, 10)
    settings = Settings(env="test", database_url="sqlite://unused")
    with TestClient(create_app(settings, engine=db.engine)) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_threshold() == (700, 10, 10)
