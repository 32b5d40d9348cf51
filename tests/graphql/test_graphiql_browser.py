"""GraphiQL's first open in a real browser (Debian's chromium through Playwright, the dashboard
tests' fixtures), against the app on a real uvicorn (issue 22, item 9): the page asks for a key
before GraphiQL mounts, so no request is sent without one (no 401, no console error), the
schema loads with the key, a query runs, and a reload keeps one tab (no duplicate `<untitled>`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Request, expect

from app.core.clock import FrozenClock
from app.core.db import unit_of_work
from app.devtools.serving import BackgroundServer
from app.main import create_app
from app.settings import Settings
from app.tenants.service import create_api_key
from tests.conftest import Database
from tests.dashboard.test_dashboard_browser import Watched, browser, watched  # noqa: F401  (fixtures)


@pytest.fixture
def served(db: Database, settings: Settings, clock: FrozenClock) -> Iterator[tuple[str, str]]:
    with unit_of_work(db.engine) as s:
        _, key = create_api_key(s, clock, role="operator", scope=None, name="graphiql")
    with BackgroundServer(create_app(settings, engine=db.engine, clock=clock)) as server:
        yield server.url, key


def test_graphiql_asks_for_a_key_before_it_introspects(served: tuple[str, str], watched: Watched) -> None:  # noqa: F811
    base, key = served
    page = watched.page
    posts: list[Request] = []
    page.on("request", lambda r: posts.append(r) if r.method == "POST" and r.url.endswith("/graphql") else None)

    page.goto(f"{base}/graphql")
    expect(page.locator("#key-panel")).to_be_visible()
    expect(page.locator(".graphiql-container")).to_have_count(0)  # not mounted: nothing introspects
    page.wait_for_timeout(300)
    assert posts == [] and watched.errors == [], (posts, watched.errors)
    watched.shot("graphiql-key-prompt")

    page.fill("#key-input", key)
    page.click("#open")
    expect(page.locator(".graphiql-container")).to_be_visible()
    expect(page.locator("#keybar")).to_contain_text(key[:10])
    # The schema arrived: the explorer and the docs know the Query type's fields.
    page.locator(".graphiql-execute-button").click()
    expect(page.locator(".result-window")).to_contain_text('"plans"', timeout=10_000)
    assert posts and all(r.headers.get("authorization") == f"Bearer {key}" for r in posts)
    tabs = page.locator(".graphiql-tab").count()
    assert tabs <= 1, tabs
    watched.shot("graphiql-open")

    # A reload opens the editor again with the key, its one tab restored, not doubled.
    page.reload()
    expect(page.locator(".graphiql-container")).to_be_visible()
    page.locator(".graphiql-execute-button").click()
    expect(page.locator(".result-window")).to_contain_text('"plans"', timeout=10_000)
    assert page.locator(".graphiql-tab").count() == tabs
    assert page.get_by_text("<untitled>").count() == 0
    assert all(r.headers.get("authorization") == f"Bearer {key}" for r in posts)
    assert watched.errors == [], watched.errors

    # "Change key" forgets it: back to the prompt; a refused key is told there.
    page.click("#change-key")
    expect(page.locator("#key-panel")).to_be_visible()
    page.fill("#key-input", "mk_op_not-a-key")
    page.click("#open")
    expect(page.locator("#key-error")).to_contain_text("refused")
    expect(page.locator(".graphiql-container")).to_have_count(0)
    assert len(watched.errors) == 1 and "401" in watched.errors[0], watched.errors  # the browser's own log line
