// meterkit dashboard: plain JavaScript over the public GraphQL API (/graphql) and its
// subscriptions (graphql-transport-ws on the same path, live.js). No build step, no framework;
// the one library is uPlot (vendor/), for the 30-day chart. Credits are decimal strings on the wire:
// the page shows them rounded to cents with thousands separators (`credits()`), keeps the exact
// string in `data-value` and the tooltip, and only the chart turns them into numbers, to draw.
"use strict";

(() => {
  const KEY_STORE = "meterkit.key";
  const DAY_MS = 86400000;
  const $ = (selector) => document.querySelector(selector);

  const state = {
    key: null, // the API key typed in (sessionStorage: this tab only)
    role: null, // "tenant" | "organization" | "operator"
    tenantId: null, // the tenant an operator is looking at (sent as X-Tenant-Id)
    live: null, // the open Live connection
    chart: null,
    tenants: new Map(), // operator view: id -> tenant
    refreshTimer: null,
    canBuy: false, // whether the key may purchase (MANAGE), probed once per tenant view
    eventCursors: [null], // "Recent events" paging: the `after` of each page seen, newest first
    view: 0, // bumped on every navigation: late answers of a left view are dropped
  };

  // ---- the API --------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(message, code) {
      super(message);
      this.code = code;
    }
  }

  async function post(query, variables, tenantId) {
    const headers = { "Content-Type": "application/json", Authorization: `Bearer ${state.key}` };
    if (tenantId) headers["X-Tenant-Id"] = tenantId;
    const response = await fetch("/graphql", {
      method: "POST",
      headers,
      body: JSON.stringify({ query, variables: variables || {} }),
    });
    let body;
    try {
      body = await response.json();
    } catch {
      throw new ApiError(`the server answered HTTP ${response.status}`, `HTTP_${response.status}`);
    }
    return { status: response.status, body };
  }

  async function gql(query, variables, tenantId) {
    const { body } = await post(query, variables, tenantId);
    // The edge's error shape writes codes in lower case; GraphQL's are UPPER_CASE: one spelling here.
    if (body.error) throw new ApiError(body.error.message, String(body.error.code).toUpperCase());
    if (body.errors && body.errors.length) {
      const first = body.errors[0];
      throw new ApiError(first.message, (first.extensions || {}).code);
    }
    return body.data;
  }

  function setLiveStatus(status, reason) {
    const el = $("#live-status");
    el.classList.remove("on", "off", "failed");
    el.classList.add(status);
    el.textContent = status === "on" ? "live" : status === "off" ? "reconnecting" : "live updates stopped";
    el.title = reason || "Live updates";
    if (status === "failed") showError(`Live updates stopped: ${reason}`);
  }

  function goLive(tenantId, subscriptions) {
    if (state.live) state.live.close();
    setLiveStatus("off");
    const payload = { Authorization: `Bearer ${state.key}` };
    if (tenantId) payload["X-Tenant-Id"] = tenantId;
    state.live = new MeterkitLive(payload, setLiveStatus);
    for (const [query, onData] of subscriptions) state.live.subscribe(query, onData);
  }

  // ---- sign in ---------------------------------------------------------------------------------

  async function signIn(key) {
    state.key = key;
    const { status, body } = await post("{ viewer { id name organization { id name } } }");
    if (status === 401 || (body.error && body.error.code === "unauthenticated")) {
      state.key = null;
      throw new ApiError("This key was refused: check it, or ask for a new one.", "UNAUTHENTICATED");
    }
    const viewer = body.data && body.data.viewer;
    if (viewer && viewer.organization && viewer.organization.id === viewer.id) {
      // An organization key: in scope is the organization's own account (its id is the organization's).
      state.role = "organization";
      $("#who").textContent = `organization: ${viewer.organization.name}`;
    } else if (viewer) {
      state.role = "tenant";
      $("#who").textContent = `tenant: ${viewer.name}`;
    } else if (body.errors && body.errors.some((e) => (e.extensions || {}).code === "VALIDATION_FAILED")) {
      state.role = "operator"; // an operator key has no tenant of its own in scope
      $("#who").textContent = "operator";
    } else {
      state.key = null;
      throw new ApiError((body.errors && body.errors[0].message) || "unexpected answer", "UNEXPECTED");
    }
    sessionStorage.setItem(KEY_STORE, key);
    $("#sign-out").hidden = false;
  }

  function signOut() {
    sessionStorage.removeItem(KEY_STORE);
    if (state.live) state.live.close();
    state.live = null;
    state.key = state.role = state.tenantId = null;
    $("#who").textContent = "";
    $("#sign-out").hidden = true;
    setLiveStatus("off");
    $("#live-status").textContent = "offline";
    location.hash = "#/";
    route();
  }

  // ---- views -----------------------------------------------------------------------------------

  function show(id) {
    for (const section of ["#sign-in", "#operator-view", "#tenant-view"]) $(section).hidden = section !== id;
  }

  function showError(message) {
    const el = $("#error");
    el.textContent = message;
    el.hidden = false;
  }

  function clearError() {
    $("#error").hidden = true;
  }

  async function route() {
    state.view += 1;
    clearError();
    if (!state.key) {
      show("#sign-in");
      return;
    }
    const match = location.hash.match(/^#\/tenant\/(ten_[A-Za-z0-9_-]+)$/);
    const lists = state.role === "operator" || state.role === "organization";
    try {
      if (lists && location.hash === "#/account") await showTenant(null); // the organization's own account
      else if (lists && !match) await showOperator();
      else await showTenant(lists ? match[1] : null);
    } catch (err) {
      showError(err.message);
    }
  }

  // ---- the tenant view -------------------------------------------------------------------------

  const TENANT_QUERY = `query Dashboard {
    viewer {
      id name externalId
      plan { key name period }
      subscription { status currentPeriodEnd }
      usage { plan status period { start end } quotas { primitive used quota } }
    }
    status { credits { balance available reserved } }
    creditPacks { key name credits priceUsd }
  }`;
  const BALANCE_SUB = "subscription { balanceChanged { balance available reserved } }";
  const USAGE_SUB = "subscription { usageChanged { plan status period { start end } quotas { primitive used quota } } }";

  async function showTenant(tenantId) {
    const view = state.view;
    state.tenantId = tenantId;
    $("#back").hidden = state.role !== "operator" && state.role !== "organization";
    $("#back").textContent = state.role === "organization" ? "\u2190 The organization" : "\u2190 All tenants";
    const [data, canBuy] = await Promise.all([gql(TENANT_QUERY, {}, tenantId), mayBuy(tenantId)]);
    if (view !== state.view) return;
    state.canBuy = canBuy;
    state.eventCursors = [null];
    const tenant = data.viewer;
    $("#tenant-name").textContent = tenant.name;
    $("#tenant-id").textContent = tenant.externalId ? `${tenant.id} · ${tenant.externalId}` : tenant.id;
    $("#plan").textContent = tenant.plan ? tenant.plan.name : "no plan";
    renderBalance(data.status.credits); // Tenant.credits is for platform and organization keys
    renderUsage(tenant.usage);
    renderPacks(data.creditPacks);
    show("#tenant-view");
    if (state.chart) {
      state.chart.destroy();
      state.chart = null;
    }
    await Promise.all([refreshEvents(tenantId, view), refreshChart(tenantId, view)]);
    if (view !== state.view) return;
    goLive(tenantId, [
      [BALANCE_SUB, (d) => { renderBalance(d.balanceChanged); scheduleRefresh(); }],
      [USAGE_SUB, (d) => { renderUsage(d.usageChanged); scheduleRefresh(); }],
    ]);
  }

  function setValue(selector, text) {
    const el = $(selector);
    if (el.textContent === text) return;
    el.textContent = text;
    el.classList.remove("flash");
    void el.offsetWidth; // restart the animation
    el.classList.add("flash");
  }

  function renderBalance(balance) {
    for (const field of ["balance", "available", "reserved"]) {
      setValue(`#${field}`, credits(balance[field]));
      const el = $(`#${field}`);
      el.dataset.value = balance[field]; // the exact decimal the API sent
      el.title = `${balance[field]} credits`;
    }
  }

  // Whether this key may buy (MANAGE): the purchase mutation with an empty pack is refused by the
  // permission check (FORBIDDEN) for a read-only key, and by validation for any other, before
  // anything is written or sent to Stripe.
  async function mayBuy(tenantId) {
    const { body } = await post('mutation Probe { purchaseCreditPack(pack: "") { __typename } }', {}, tenantId);
    return !(body.errors || []).some((e) => (e.extensions || {}).code === "FORBIDDEN");
  }

  function renderUsage(usage) {
    const box = $("#quotas");
    if (!usage) {
      box.replaceChildren();
      $("#period").textContent = "";
      $("#quotas-empty").hidden = false;
      return;
    }
    $("#period").textContent = `${day(usage.period.start)} → ${day(usage.period.end)}${usage.status ? " · " + usage.status : ""}`;
    $("#quotas-empty").hidden = usage.quotas.length > 0;
    const rows = usage.quotas.map((q) => {
      const row = element("div", { class: "quota", "data-primitive": q.primitive });
      const share = q.quota > 0 ? q.used / q.quota : q.used > 0 ? 1 : 0;
      const fill = element("div", { class: `fill${share >= 1 ? " over" : share >= 0.8 ? " high" : ""}` });
      fill.style.width = `${Math.min(share, 1) * 100}%`;
      const bar = element("div", {
        class: "bar",
        role: "progressbar",
        "aria-label": q.primitive,
        "aria-valuemin": "0",
        "aria-valuemax": String(q.quota),
        "aria-valuenow": String(q.used),
      });
      bar.append(fill);
      const figures = element("div", { class: "figures" });
      figures.append(element("span", { class: "used" }, String(q.used)), " / ", element("span", { class: "limit" }, String(q.quota)));
      row.append(element("div", { class: "name" }, q.primitive), bar, figures);
      return row;
    });
    box.replaceChildren(...rows);
  }

  function renderPacks(packs) {
    const box = $("#packs");
    $("#packs-note").textContent = !packs.length
      ? "No packs for sale."
      : state.canBuy
        ? "Payment opens Stripe Checkout; the credits arrive once it is paid."
        : "This key is read-only: sign in with a key that has the MANAGE scope to buy.";
    box.replaceChildren(
      ...packs.map((p) => {
        const row = element("div", { class: "pack", "data-pack": p.key });
        const text = element("div");
        text.append(element("div", { class: "name" }, p.name), element("div", { class: "credits" }, `${credits(p.credits)} credits · $${p.priceUsd}`));
        const button = element("button", { type: "button" }, "Buy");
        if (state.canBuy) button.addEventListener("click", () => buy(p.key, button));
        else {
          button.disabled = true;
          button.title = "This key is read-only: buying needs a key with the MANAGE scope";
        }
        row.append(text, button);
        return row;
      }),
    );
  }

  async function buy(pack, button) {
    button.disabled = true;
    clearError();
    try {
      const data = await gql(
        `mutation Buy($pack: String!) { purchaseCreditPack(pack: $pack) { __typename
          ... on CheckoutSession { url } ... on UserError { code message } } }`,
        { pack },
        state.tenantId,
      );
      const result = data.purchaseCreditPack;
      if (result.__typename === "CheckoutSession") {
        location.assign(result.url);
        return;
      }
      showError(`Could not start the purchase: ${result.message}`);
    } catch (err) {
      showError(`Could not start the purchase: ${err.message}`);
    }
    button.disabled = false;
  }

  // Events and the chart follow a change a moment later, once a burst of charges has settled.
  function scheduleRefresh() {
    clearTimeout(state.refreshTimer);
    const view = state.view;
    state.refreshTimer = setTimeout(() => {
      if (view !== state.view) return;
      refreshEvents(state.tenantId, view).catch((err) => showError(err.message));
      refreshChart(state.tenantId, view).catch((err) => showError(err.message));
    }, 1500);
  }

  // The recent metered calls, a page at a time (a Relay connection: `after` the previous page's
  // endCursor). state.eventCursors holds the `after` of every page up to the one shown.
  const EVENTS_PAGE = 15;

  async function loadRecentEvents(tenantId, after) {
    const data = await gql(
      `query Events($after: String) { usageHistory(first: ${EVENTS_PAGE}, days: 30, after: $after) {
        nodes { id kind primitive quantity creditsUsed reference createdAt apiKey { name prefix } }
        pageInfo { hasNextPage endCursor } } }`,
      { after },
      tenantId,
    );
    return data.usageHistory;
  }

  async function refreshEvents(tenantId, view) {
    const cursors = state.eventCursors;
    const page = await loadRecentEvents(tenantId, cursors[cursors.length - 1]);
    if (view !== state.view) return;
    const events = page.nodes;
    $("#events-empty").hidden = events.length > 0;
    $("#events").hidden = events.length === 0;
    $("#events tbody").replaceChildren(
      ...events.map((e) => {
        const tr = element("tr", { "data-event": e.id });
        const key = e.apiKey ? `${e.apiKey.name || "key"} (${e.apiKey.prefix})` : "–";
        tr.append(
          element("td", { class: "when" }, when(e.createdAt)),
          element("td", { class: "mono" }, e.kind === "charge" ? e.primitive : `${e.primitive} (${e.kind})`),
          element("td", { class: "num" }, String(e.quantity)),
          element("td", { class: "num", title: `${e.creditsUsed} credits` }, credits(e.creditsUsed)),
          element("td", { class: "mono ref" }, e.reference || "–"),
          element("td", { class: "key" }, key),
        );
        return tr;
      }),
    );
    const pageNo = cursors.length;
    $("#events-pager").hidden = pageNo === 1 && !page.pageInfo.hasNextPage;
    $("#events-page").textContent = `page ${pageNo}`;
    $("#events-newer").disabled = pageNo === 1;
    $("#events-older").disabled = !page.pageInfo.hasNextPage;
    state.eventsNext = page.pageInfo.endCursor;
  }

  function pageEvents(older) {
    if (older) state.eventCursors.push(state.eventsNext);
    else if (state.eventCursors.length > 1) state.eventCursors.pop();
    refreshEvents(state.tenantId, state.view).catch((err) => showError(err.message));
  }

  // Credits granted per UTC day over the same days (signup, plan allowance, packs, operator
  // grants): the ledger's grant entries, from creditHistory. Grants are few next to charges,
  // but the history pages through every entry: at most GRANT_PAGES pages are read, and a chart
  // that stopped there says so in the series' label.
  const GRANT_PAGES = 10;

  async function loadGrants(tenantId, x, days) {
    const byDay = new Map(x.map((t) => [t, 0]));
    let after = null;
    let complete = false;
    for (let page = 0; page < GRANT_PAGES; page++) {
      const data = await gql(
        `query Grants($after: String) { creditHistory(first: 200, days: ${days}, after: $after) {
          nodes { kind amount createdAt } pageInfo { hasNextPage endCursor } } }`,
        { after },
        tenantId,
      );
      for (const entry of data.creditHistory.nodes) {
        if (entry.kind !== "grant") continue;
        const dayStart = Math.floor(parseTime(entry.createdAt) / DAY_MS) * (DAY_MS / 1000);
        if (byDay.has(dayStart)) byDay.set(dayStart, byDay.get(dayStart) + Number(entry.amount));
      }
      if (!data.creditHistory.pageInfo.hasNextPage) {
        complete = true;
        break;
      }
      after = data.creditHistory.pageInfo.endCursor;
    }
    return { granted: x.map((t) => byDay.get(t)), complete };
  }

  // The data of the 30-day chart, and the only place that fetches it: credits spent, credits
  // granted and calls made per UTC day, {x: [day start, seconds], credits, granted, calls}, from
  // usageSeries (hourly rollups kept with each charge: one query whatever the number of events)
  // and the grants (loadGrants).
  async function loadUsageSeries(tenantId, days = 30) {
    const end = Math.floor(Date.now() / DAY_MS) * DAY_MS + DAY_MS;
    const from = new Date(end - days * DAY_MS).toISOString();
    const to = new Date(end).toISOString();
    const data = await gql(
      `query Series($from: DateTime!, $to: DateTime!) {
        usageSeries(from: $from, to: $to, interval: DAY) { start quantity credits } }`,
      { from, to },
      tenantId,
    );
    const points = data.usageSeries;
    const x = points.map((p) => parseTime(p.start) / 1000);
    const { granted, complete } = await loadGrants(tenantId, x, days);
    return {
      x,
      credits: points.map((p) => Number(p.credits)), // to draw only; the page shows credits as sent
      granted,
      grantsComplete: complete,
      calls: points.map((p) => p.quantity),
    };
  }

  async function refreshChart(tenantId, view) {
    const series = await loadUsageSeries(tenantId);
    if (view !== state.view) return;
    const data = [series.x, series.credits, series.granted, series.calls];
    state.grantsComplete = series.grantsComplete;
    if (state.chart) {
      state.chart.setData(data);
      return;
    }
    const el = $("#chart");
    el.replaceChildren();
    // A whole day of room on either side: the newest day's bars (spent and granted, side by side)
    // stand inside the plot instead of being cut at its edge.
    const pad = DAY_MS / 1000;
    state.chart = new uPlot(
      {
        width: chartWidth(),
        height: 240,
        scales: {
          x: { time: true, range: (u, min, max) => [min - pad, max + pad] },
          credits: { range: (u, min, max) => [0, Math.max(max, 1) * 1.1] },
          calls: { range: (u, min, max) => [0, Math.max(max, 1) * 1.1] },
        },
        series: [
          { label: "Day", value: (u, ts) => (ts == null ? "–" : new Date(ts * 1000).toISOString().slice(0, 10)) },
          {
            label: "Spent",
            scale: "credits",
            stroke: "#2f6fed",
            fill: "rgba(47, 111, 237, 0.55)",
            paths: uPlot.paths.bars({ size: [0.4, 14], align: -1 }),
            points: { show: false },
          },
          {
            label: series.grantsComplete ? "Granted" : `Granted (newest ${GRANT_PAGES * 200} entries)`,
            scale: "credits",
            stroke: "#8a5cf6",
            fill: "rgba(138, 92, 246, 0.5)",
            paths: uPlot.paths.bars({ size: [0.4, 14], align: 1 }),
            points: { show: false },
          },
          { label: "Calls", scale: "calls", stroke: "#1f9d55", width: 2, points: { show: true, size: 4 } },
        ],
        axes: [
          {},
          { scale: "credits", label: "credits", size: 60, stroke: "#2f6fed" },
          { scale: "calls", label: "calls", side: 1, size: 60, stroke: "#1f9d55", grid: { show: false } },
        ],
      },
      data,
      el,
    );
  }

  // ---- the operator view -----------------------------------------------------------------------

  const TENANT_FIELDS = "id name externalId plan { key name } credits { balance available } usage { quotas { used quota } }";
  const ACTIVITY_SUB = `subscription { tenantActivity { tenantId tenant { ${TENANT_FIELDS} } } }`;

  async function loadTenants() {
    const all = [];
    let after = null;
    for (let page = 0; page < 10; page++) {
      const data = await gql(
        `query Tenants($after: String) { tenants(first: 200, after: $after) {
          nodes { ${TENANT_FIELDS} } pageInfo { hasNextPage endCursor } } }`,
        { after },
      );
      all.push(...data.tenants.nodes);
      if (!data.tenants.pageInfo.hasNextPage) break;
      after = data.tenants.pageInfo.endCursor;
    }
    return all;
  }

  const ORG_QUERY = "{ viewer { id name credits { balance available reserved } } }";

  function renderOrgBalance(balance) {
    for (const field of ["balance", "available", "reserved"]) {
      const el = $(`#org-${field}`);
      el.textContent = credits(balance[field]);
      el.dataset.value = balance[field]; // the exact decimal the API sent
      el.title = `${balance[field]} credits`;
    }
  }

  async function showOperator() {
    const view = state.view;
    state.tenantId = null;
    if (state.chart) {
      state.chart.destroy();
      state.chart = null;
    }
    const organization = state.role === "organization";
    const [tenants, org] = await Promise.all([loadTenants(), organization ? gql(ORG_QUERY) : null]);
    if (view !== state.view) return;
    state.tenants = new Map(tenants.map((t) => [t.id, t]));
    $("#tenants tbody").replaceChildren(...tenants.map(tenantRow));
    applySearch();
    $("#org-summary").hidden = !organization;
    $("#list-title").textContent = organization ? "End users" : "Tenants";
    show("#operator-view");
    if (organization) {
      // The organization's balance, live; its end users' rows follow their own charges when opened.
      $("#org-name").textContent = org.viewer.name;
      $("#org-id").textContent = org.viewer.id;
      renderOrgBalance(org.viewer.credits);
      goLive(null, [[BALANCE_SUB, (d) => renderOrgBalance(d.balanceChanged)]]);
      return;
    }
    goLive(null, [
      [
        ACTIVITY_SUB,
        (d) => {
          const t = d.tenantActivity.tenant;
          if (!t) return;
          state.tenants.set(t.id, t);
          const row = tenantRow(t);
          const old = document.querySelector(`#tenants tbody tr[data-tenant="${t.id}"]`);
          if (old) old.replaceWith(row);
          else $("#tenants tbody").append(row);
          applySearch();
        },
      ],
    ]);
  }

  function usageShare(tenant) {
    const quotas = (tenant.usage && tenant.usage.quotas) || [];
    let share = null;
    for (const q of quotas) {
      const s = q.quota > 0 ? q.used / q.quota : q.used > 0 ? 1 : 0;
      share = share === null ? s : Math.max(share, s);
    }
    return share; // the fullest quota; null when the plan has none
  }

  function tenantRow(t) {
    const tr = element("tr", { "data-tenant": t.id, tabindex: "0" });
    const share = usageShare(t);
    const usage = element("td", { class: "usage" });
    if (share === null) usage.append(element("span", { class: "muted" }, "no quotas"));
    else {
      const cell = element("div", { class: "usage-cell" });
      const bar = element("div", { class: "bar" });
      const fill = element("div", { class: `fill${share >= 1 ? " over" : share >= 0.8 ? " high" : ""}` });
      fill.style.width = `${Math.min(share, 1) * 100}%`;
      bar.append(fill);
      cell.append(bar, element("span", { class: "pct" }, `${Math.round(share * 100)}%`));
      usage.append(cell);
    }
    tr.append(
      element("td", { class: "name" }, t.name),
      element("td", { class: "mono" }, t.externalId || ""),
      element("td", { class: "plan" }, t.plan ? t.plan.name : "–"),
      element("td", { class: "num balance", "data-value": t.credits.balance }, credits(t.credits.balance)),
      element("td", { class: "num available", "data-value": t.credits.available }, credits(t.credits.available)),
      usage,
    );
    const open = () => (location.hash = `#/tenant/${t.id}`);
    tr.addEventListener("click", open);
    tr.addEventListener("keydown", (e) => e.key === "Enter" && open());
    return tr;
  }

  function applySearch() {
    const needle = $("#search").value.trim().toLowerCase();
    let shown = 0;
    for (const tr of document.querySelectorAll("#tenants tbody tr")) {
      const t = state.tenants.get(tr.dataset.tenant);
      const haystack = t ? [t.id, t.name, t.externalId || "", t.plan ? `${t.plan.key} ${t.plan.name}` : ""].join(" ").toLowerCase() : "";
      tr.hidden = needle !== "" && !haystack.includes(needle);
      if (!tr.hidden) shown += 1;
    }
    $("#tenants-empty").hidden = shown > 0;
  }

  // ---- small helpers ---------------------------------------------------------------------------

  function element(tag, attrs = {}, text) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, value);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // The API's times are ISO 8601; one without an offset is UTC.
  function parseTime(iso) {
    return Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);
  }

  // Credits for people: rounded to cents, thousands grouped ("208.1631" -> "208.16",
  // "12000" -> "12,000"); the exact string stays in data-value and the tooltip.
  const CREDITS = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });

  function credits(value) {
    return CREDITS.format(Number(value));
  }

  function chartWidth() {
    return Math.max($("#chart").clientWidth, 260);
  }

  function day(iso) {
    return new Date(parseTime(iso)).toISOString().slice(0, 10);
  }

  function when(iso) {
    return new Date(parseTime(iso)).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  // What the chart draws, for a look from the browser's console (and the browser tests).
  window.meterkitDashboard = Object.freeze({
    chartData: () => (state.chart ? state.chart.data.map((s) => [...s]) : null),
    // Where the newest day's bars end and where the plot ends, in CSS pixels.
    newestBarRoom: () => {
      if (!state.chart) return null;
      const u = state.chart;
      const x = u.data[0];
      return { barCenter: u.valToPos(x[x.length - 1], "x"), plotWidth: u.bbox.width / devicePixelRatio };
    },
  });

  // ---- start -----------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", async () => {
    $("#key-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      clearError();
      try {
        await signIn($("#key-input").value.trim());
        $("#key-input").value = "";
        await route();
      } catch (err) {
        showError(err.message);
      }
    });
    $("#sign-out").addEventListener("click", signOut);
    $("#search").addEventListener("input", applySearch);
    window.addEventListener("hashchange", route);
    window.addEventListener("resize", () => {
      if (state.chart) state.chart.setSize({ width: chartWidth(), height: 240 });
    });
    $("#events-older").addEventListener("click", () => pageEvents(true));
    $("#events-newer").addEventListener("click", () => pageEvents(false));
    const saved = sessionStorage.getItem(KEY_STORE);
    if (saved) {
      try {
        await signIn(saved);
      } catch (err) {
        sessionStorage.removeItem(KEY_STORE);
        showError(err.message);
      }
    }
    await route();
  });
})();
