"""/dashboard in a real browser: Debian's chromium driven by Playwright (never a downloaded
browser; .ci/run installs chromium), against the app served by uvicorn, on SQLite and PostgreSQL.

The page must show the numbers the API answers, follow a charge made elsewhere without a reload
(the subscriptions), find a tenant in the operator's table, start a Checkout from the buy button,
and log no console error. Screenshots land in tests/artifacts/dashboard/ (gitignored)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize, expect, sync_playwright

from tests.conftest import Api
from tests.fixtures_catalog import KIT, PLAN, SET_SUB
from tests.paths import ROOT
from tests.stripe_fake import fake_stripe, fake_stripe_server  # noqa: F401  (fixtures)
from tests.stripe_harness import StripeEnv, stripe_env_fixture  # noqa: F401  (fixture)

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "artifacts" / "dashboard"

CHARGE = """mutation($i: MeterInput!) { charge(input: $i) { __typename ... on Charged { creditsRemaining } } }"""
VIEWER = """{ viewer { name plan { name } usage { quotas { primitive used quota } } }
  status { credits { balance available reserved } }
  usageHistory(first: 15, days: 30) { nodes { primitive quantity creditsUsed } }
  creditPacks { key } }"""
GRANTS = "{ creditHistory(first: 200, days: 30) { nodes { kind amount } } }"
READ_ONLY_KEY = """mutation { createApiKey(name: "browser", scopes: [READ]) {
  ... on CreatedApiKey { secret apiKey { scopes } } } }"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does); never `playwright install`")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Watched:
    """A page whose console errors and uncaught exceptions are collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000, "an empty-looking screenshot"
        return path


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield Watched(page)
    context.close()


def sign_in(w: Watched, base: str, key: str) -> None:
    w.page.goto(f"{base}/dashboard")
    w.page.fill("#key-input", key)
    w.page.click("#connect")


def charge(api: Api, key: str, idem: str, primitive: str = "email.send", tenant: str | None = None) -> str:
    data = api(CHARGE, {"i": {"primitive": primitive, "idempotencyKey": idem}}, key=key, tenant=tenant)
    assert data["charge"]["__typename"] == "Charged", data
    return str(data["charge"]["creditsRemaining"])


def tenant_with_usage(env: StripeEnv, name: str, external_id: str | None = None) -> tuple[str, str]:
    api = env.api
    extra = {"externalId": external_id} if external_id else {}
    tid = api.create_tenant(name, **extra)
    api(SET_SUB, {"t": tid, "i": {"planKey": "pro"}})
    key = api.tenant_key(tid)
    return tid, key


def shown(value: str) -> str:
    """A credits decimal as the page shows it: cents, thousands grouped (208.1631 -> 208.16)."""
    if "." not in value:
        return f"{int(value):,}"
    cents = Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)  # as Intl.NumberFormat rounds
    return f"{cents:,}".rstrip("0").rstrip(".")


def assert_tenant_view_matches_api(page: Page, api: Api, key: str | None, tenant: str | None = None) -> dict[str, Any]:
    data = api(VIEWER, key=key, tenant=tenant)
    viewer = data["viewer"]
    expect(page.locator("#tenant-name")).to_have_text(viewer["name"])
    expect(page.locator("#plan")).to_have_text(viewer["plan"]["name"])
    for field in ("balance", "available", "reserved"):
        # Shown rounded to cents with thousands grouped; the exact decimal in data-value.
        expect(page.locator(f"#{field}")).to_have_attribute("data-value", data["status"]["credits"][field])
        expect(page.locator(f"#{field}")).to_have_text(shown(data["status"]["credits"][field]))
    quotas = viewer["usage"]["quotas"]
    expect(page.locator("#quotas .quota")).to_have_count(len(quotas))
    for q in quotas:
        row = page.locator(f'#quotas .quota[data-primitive="{q["primitive"]}"]')
        expect(row.locator(".used")).to_have_text(str(q["used"]))
        expect(row.locator(".limit")).to_have_text(str(q["quota"]))
        expect(row.locator(".bar")).to_have_attribute("aria-valuenow", str(q["used"]))
    events = data["usageHistory"]["nodes"]
    expect(page.locator("#events tbody tr")).to_have_count(len(events))
    if events:
        first = page.locator("#events tbody tr").first
        expect(first.locator("td").nth(1)).to_have_text(events[0]["primitive"])
        expect(first.locator("td").nth(3)).to_have_text(shown(events[0]["creditsUsed"]))
    packs = [p["key"] for p in data["creditPacks"]]
    assert page.locator("#packs .pack").evaluate_all("els => els.map(e => e.dataset.pack)") == packs
    return {**viewer, "credits": data["status"]["credits"], "events": events}


def test_tenant_view_shows_the_api_numbers_and_follows_a_charge_live(stripe_env: StripeEnv, watched: Watched) -> None:
    env, page = stripe_env, watched.page
    tid, key = tenant_with_usage(env, "Acme Robotics", "acme-42")
    for i in range(3):
        charge(env.api, key, f"mail-{i}")
    charge(env.api, key, "search-0", primitive="search.web")
    # The browser gets a read-only key, minted by the tenant's own: enough for the whole view.
    made = env.api(READ_ONLY_KEY, key=key)["createApiKey"]
    assert made["apiKey"]["scopes"] == ["READ"]
    browser_key = made["secret"]

    sign_in(watched, env.url, browser_key)
    expect(page.locator("#tenant-view")).to_be_visible()
    expect(page.locator("#live-status")).to_have_text("live")
    before = assert_tenant_view_matches_api(page, env.api, browser_key)
    # The chart is drawn (uPlot's canvas) from the usage series: today's bar holds every charge.
    expect(page.locator("#chart canvas")).to_have_count(1)
    expect(page.locator("#chart .u-legend")).to_contain_text("Spent")
    x, credits, granted, calls = page.evaluate("meterkitDashboard.chartData()")
    assert len(x) == len(credits) == len(granted) == len(calls) == 30
    events = before["events"]
    assert credits[-1] == sum(Decimal(e["creditsUsed"]) for e in events) > 0
    assert calls[-1] == sum(e["quantity"] for e in events) == 4
    assert not any(credits[:-1]) and not any(calls[:-1])  # everything happened today
    # Granted today: the signup credits and the pro plan's 200, from the ledger's grant entries.
    grants = env.api(GRANTS, key=key)["creditHistory"]["nodes"]
    assert granted[-1] == sum(Decimal(g["amount"]) for g in grants if g["kind"] == "grant") == 220
    assert not any(granted[:-1])
    expect(page.locator("#chart .u-legend")).to_contain_text("Granted")
    room = page.evaluate("meterkitDashboard.newestBarRoom()")
    assert room["barCenter"] + 20 < room["plotWidth"], room  # the newest bars stand inside the plot
    expect(page.locator('#packs .pack[data-pack="small"]')).to_contain_text("$10")
    watched.shot("tenant-before-charge")

    # A charge made through the API moves the balance and the bar, without a reload.
    page.evaluate("window.__sameDocument = true")
    remaining = charge(env.api, key, "live-1")  # with the tenant's full key, elsewhere
    expect(page.locator("#available")).to_have_attribute("data-value", remaining, timeout=3000)
    mail = page.locator('#quotas .quota[data-primitive="email.send"]')
    expect(mail.locator(".used")).to_have_text("4", timeout=3000)
    expect(mail.locator(".bar")).to_have_attribute("aria-valuenow", "4")
    width = mail.locator(".fill").evaluate("el => el.style.width")
    assert width == "0.4%", width  # 4 of 1000
    assert page.evaluate("window.__sameDocument") is True
    assert before["credits"]["available"] != remaining
    # The recent events follow too (refreshed after the burst settles).
    expect(page.locator("#events tbody tr")).to_have_count(5, timeout=5000)
    assert_tenant_view_matches_api(page, env.api, browser_key)
    watched.shot("tenant-after-charge")

    # The key stays in this tab: a reload opens the dashboard again without asking.
    page.reload()
    expect(page.locator("#tenant-view")).to_be_visible()
    expect(page.locator("#available")).to_have_attribute("data-value", remaining)
    assert page.evaluate("sessionStorage.getItem('meterkit.key')") == browser_key

    # A read-only key cannot buy: the buttons are disabled and the note says why.
    for button in page.locator("#packs .pack button").all():
        expect(button).to_be_disabled()
        expect(button).to_have_attribute("title", re.compile("read-only"))
    expect(page.locator("#packs-note")).to_contain_text("read-only")
    assert watched.errors == [], watched.errors

    # With the tenant's full key, the buy button starts a Stripe Checkout (the fake's hosted page).
    page.click("#sign-out")
    sign_in(watched, env.url, key)
    expect(page.locator("#tenant-view")).to_be_visible()
    expect(page.locator('#packs .pack[data-pack="small"] button')).to_be_enabled()
    page.locator('#packs .pack[data-pack="small"] button').click()
    page.wait_for_url(re.compile(re.escape(env.fake.url) + r"/checkout/cs_"))
    expect(page.locator("h1")).to_have_text("Fake Stripe Checkout")  # (its own console is not ours to judge)


def test_operator_search_finds_a_tenant_and_opens_its_view(stripe_env: StripeEnv, watched: Watched) -> None:
    env, page = stripe_env, watched.page
    ids = {}
    for name, ext in (("Acme Robotics", "acme-42"), ("Globex Shipping", "globex-7"), ("Initech Labs", None)):
        tid, key = tenant_with_usage(env, name, ext)
        ids[name] = (tid, key)
    globex, globex_key = ids["Globex Shipping"]
    for i in range(5):
        charge(env.api, globex_key, f"g-{i}")

    sign_in(watched, env.url, env.api.operator_key)
    expect(page.locator("#operator-view")).to_be_visible()
    rows = page.locator("#tenants tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator("#live-status")).to_have_text("live")
    row = page.locator(f'#tenants tbody tr[data-tenant="{globex}"]')
    credits = env.api("{ viewer { credits { balance available } } }", tenant=globex)["viewer"]["credits"]
    expect(row.locator(".balance")).to_have_text(shown(credits["balance"]))
    expect(row.locator(".balance")).to_have_attribute("data-value", credits["balance"])
    expect(row.locator(".plan")).to_have_text("Pro")
    expect(row.locator(".pct")).to_have_text("1%")  # 5 of 1000 email.send, rounded
    watched.shot("operator-table")

    page.fill("#search", "glob")
    expect(page.locator("#tenants tbody tr:visible")).to_have_count(1)
    expect(page.locator("#tenants tbody tr:visible .name")).to_have_text("Globex Shipping")
    page.fill("#search", "initech")
    expect(page.locator("#tenants tbody tr:visible .name")).to_have_text("Initech Labs")
    page.fill("#search", "acme-42")  # the external id
    expect(page.locator("#tenants tbody tr:visible .name")).to_have_text("Acme Robotics")
    page.fill("#search", "nobody")
    expect(page.locator("#tenants tbody tr:visible")).to_have_count(0)
    expect(page.locator("#tenants-empty")).to_be_visible()
    page.fill("#search", "globex")
    watched.shot("operator-search")

    # The table is live too: a charge moves the tenant's row.
    remaining = charge(env.api, globex_key, "g-live")
    expect(row.locator(".available")).to_have_attribute("data-value", remaining, timeout=3000)

    page.locator("#tenants tbody tr:visible").click()
    expect(page.locator("#tenant-view")).to_be_visible()
    assert page.url.endswith(f"#/tenant/{globex}")
    expect(page.locator("#back")).to_be_visible()
    assert_tenant_view_matches_api(page, env.api, None, tenant=globex)
    expect(page.locator("#live-status")).to_have_text("live")
    remaining = charge(env.api, globex_key, "g-live-2")
    expect(page.locator("#available")).to_have_attribute("data-value", remaining, timeout=3000)
    watched.shot("operator-tenant-view")

    page.click("#back")
    expect(page.locator("#operator-view")).to_be_visible()
    assert watched.errors == [], watched.errors


def test_a_refused_key_and_a_revoked_key_are_told(stripe_env: StripeEnv, watched: Watched) -> None:
    env, page = stripe_env, watched.page
    page.goto(f"{env.url}/dashboard")
    expect(page.locator("#sign-in")).to_be_visible()
    page.fill("#key-input", "mk_tn_not-a-key")
    page.click("#connect")
    expect(page.locator("#error")).to_contain_text("refused")
    expect(page.locator("#sign-in")).to_be_visible()
    # The browser itself logs the 401 of that request: the only console error of this test.
    assert len(watched.errors) == 1 and "401" in watched.errors[0], watched.errors

    tid, key = tenant_with_usage(env, "Umbrella")
    key_id = env.api(
        "mutation($t: ID!) { createApiKey(tenantId: $t) { ... on CreatedApiKey { secret apiKey { id } } } }",
        {"t": tid},
    )["createApiKey"]
    page.fill("#key-input", key_id["secret"])
    page.click("#connect")
    expect(page.locator("#live-status")).to_have_text("live")
    env.api("mutation($id: ID!) { revokeApiKey(id: $id) { __typename } }", {"id": key_id["apiKey"]["id"]})
    expect(page.locator("#live-status")).to_have_text("live updates stopped", timeout=3000)
    expect(page.locator("#error")).to_contain_text("API key revoked")
    watched.shot("revoked-key")


def test_the_page_and_its_assets_are_served_offline(stripe_env: StripeEnv) -> None:
    page = httpx.get(f"{stripe_env.url}/dashboard")
    assert page.status_code == 200 and "meterkit dashboard" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # Every script and stylesheet the page names is one of ours, and is served.
    assets = re.findall(r'(?:src|href)="(/dashboard/assets/[^"]+)"', page.text)
    assert len(assets) == 5, assets
    for path in assets:
        r = httpx.get(f"{stripe_env.url}{path}")
        assert r.status_code == 200 and len(r.content) > 500, path
    assert not re.search(r'(?:src|href)="https?://', page.text)


PHONE: ViewportSize = {"width": 390, "height": 844}


def test_a_phone_sees_the_bars_wrapped_ids_and_pages_of_events(stripe_env: StripeEnv, browser: Browser) -> None:
    """At 390 px the quota bars keep their width and nothing runs off the page; "Recent events" has
    reference and key columns and pages on; a Checkout return page leads back to the dashboard."""
    env = stripe_env
    tid, key = tenant_with_usage(env, "Initech Labs With A Rather Long Name", "initech-0000-1111-2222")
    for i in range(17):  # more than a page (15)
        data = env.api(
            CHARGE, {"i": {"primitive": "email.send", "idempotencyKey": f"p-{i}", "reference": f"msg-{i}"}}, key=key
        )
        assert data["charge"]["__typename"] == "Charged", data
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    w = Watched(page)
    try:
        sign_in(w, env.url, key)
        expect(page.locator("#tenant-view")).to_be_visible()
        expect(page.locator("#live-status")).to_have_text("live")
        # Nothing wider than the screen (the events table scrolls inside its own box).
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        tid_box = page.locator("#tenant-id").bounding_box()
        assert tid_box is not None and tid_box["x"] + tid_box["width"] <= PHONE["width"], tid_box
        # One snapshot of every bar: a live usage update re-renders #quotas, so measuring the bars one
        # locator at a time can meet a bar that was just replaced (and has no box).
        expect(page.locator("#quotas .quota .bar").first).to_be_visible()
        widths = page.evaluate(
            "[...document.querySelectorAll('#quotas .quota .bar')].map((b) => b.getBoundingClientRect().width)"
        )
        assert widths and all(width > 250 for width in widths), widths  # visible, the screen's width
        # Reference and key columns, newest first; then the next page and back.
        rows = page.locator("#events tbody tr")
        expect(rows).to_have_count(15)
        expect(rows.first.locator("td.ref")).to_have_text("msg-16")
        expect(rows.first.locator("td.key")).to_contain_text("mk_tn_")
        expect(page.locator("#events-page")).to_have_text("page 1")
        w.shot("tenant-phone")
        page.click("#events-older")
        expect(page.locator("#events-page")).to_have_text("page 2")
        expect(rows).to_have_count(2)
        expect(rows.last.locator("td.ref")).to_have_text("msg-0")
        expect(page.locator("#events-older")).to_be_disabled()
        page.click("#events-newer")
        expect(rows.first.locator("td.ref")).to_have_text("msg-16")
        assert w.errors == [], w.errors

        # Buy from the phone, pay on the stand-in, and come back by the return page's link.
        page.locator('#packs .pack[data-pack="small"] button').click()
        page.wait_for_url(re.compile(re.escape(env.fake.url) + r"/checkout/cs_"))
        session_id = page.url.rsplit("/", 1)[1]
        env.fake.complete_checkout(session_id)
        env.deliver_all()
        page.goto(f"{env.url}/billing/pack/success?session_id={session_id}")
        w.errors.clear()  # the stand-in's own page (its favicon: a 401 there) is not ours to judge
        expect(page.locator("main")).to_have_attribute("data-state", "credited")
        page.click("#back")
        expect(page.locator("#tenant-view")).to_be_visible()
        assert w.errors == [], w.errors
    finally:
        context.close()


CREATE_ORG = """mutation($i: CreateOrganizationInput!) { createOrganization(input: $i) {
  __typename ... on CreatedOrganization { secret organization { id } } } }"""
CREATE_END_USER = """mutation($i: CreateTenantInput!) { createTenant(input: $i) { __typename ... on Tenant { id } } }"""


def _organization_with_end_users(api: Api, name: str, users: list[str]) -> tuple[str, str, list[str]]:
    """An organization (its key only from here on) with its own kit and plan, and subscribed end users."""
    out = api(CREATE_ORG, {"i": {"name": name}})["createOrganization"]
    org_id, key = out["organization"]["id"], out["secret"]
    slug = name.lower().replace(" ", "_")
    kit = {"key": f"kit_{slug}", "name": name, "allowedPrimitives": ["email.*"]}
    assert api(KIT, {"i": kit}, key=key)["upsertAccountKit"]["__typename"] == "AccountKit"
    plan = {"key": f"plan_{slug}", "name": f"{name} Pro", "accountKitId": kit["key"], "period": "month",
            "quotas": [{"primitive": "email.send", "quota": 100}]}  # fmt: skip
    assert api(PLAN, {"i": plan}, key=key)["upsertPlan"]["__typename"] == "Plan"
    ids = []
    for user in users:
        tid = api(CREATE_END_USER, {"i": {"name": user}}, key=key)["createTenant"]["id"]
        sub = api(SET_SUB, {"i": {"planKey": plan["key"]}, "t": tid}, key=key)["setSubscription"]
        assert sub["__typename"] == "SubscriptionChanged", sub
        ids.append(tid)
    return org_id, key, ids


def test_an_organization_sees_its_balance_and_only_its_end_users(stripe_env: StripeEnv, watched: Watched) -> None:
    """Issue 19: an organization key opens the organization's view, its own balance (live) over its end
    users; an end user's row opens that end user; another organization's end users are not listed."""
    env, page = stripe_env, watched.page
    org_id, key, (jane, john) = _organization_with_end_users(env.api, "Acme Agents", ["Jane", "John"])
    _, _, (stranger,) = _organization_with_end_users(env.api, "Globex", ["Stranger"])
    charge(env.api, key, "org-1", tenant=jane)

    sign_in(watched, env.url, key)
    expect(page.locator("#org-summary")).to_be_visible()
    expect(page.locator("#who")).to_have_text("organization: Acme Agents")
    expect(page.locator("#org-name")).to_have_text("Acme Agents")
    expect(page.locator("#org-id")).to_have_text(org_id)
    expect(page.locator("#list-title")).to_have_text("End users")
    own = env.api("{ viewer { credits { balance available } } }", key=key)["viewer"]["credits"]
    expect(page.locator("#org-balance")).to_have_attribute("data-value", own["balance"])
    expect(page.locator("#org-balance")).to_have_text(shown(own["balance"]))
    rows = page.locator("#tenants tbody tr")
    expect(rows).to_have_count(2)
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.tenant)")) == sorted([jane, john])
    assert page.locator(f'#tenants tbody tr[data-tenant="{stranger}"]').count() == 0
    expect(page.locator("#live-status")).to_have_text("live")

    # An end user's call is paid by the organization: its balance moves on the page, live.
    charge(env.api, key, "org-2", tenant=john)
    after = env.api("{ viewer { credits { balance available } } }", key=key)["viewer"]["credits"]
    assert Decimal(after["available"]) < Decimal(own["available"])
    expect(page.locator("#org-available")).to_have_attribute("data-value", after["available"], timeout=3000)
    watched.shot("organization-view")

    page.locator(f'#tenants tbody tr[data-tenant="{john}"]').click()
    expect(page.locator("#tenant-view")).to_be_visible()
    expect(page.locator("#tenant-name")).to_have_text("John")
    expect(page.locator('#quotas .quota[data-primitive="email.send"] .used')).to_have_text("1")
    expect(page.locator("#back")).to_have_text("\u2190 The organization")
    page.click("#back")
    expect(page.locator("#org-summary")).to_be_visible()

    page.click("#org-account")  # the organization's own account: packs, history
    expect(page.locator("#tenant-view")).to_be_visible()
    expect(page.locator("#tenant-name")).to_have_text("Acme Agents")
    expect(page.locator("#available")).to_have_attribute("data-value", after["available"])
    assert watched.errors == [], watched.errors
