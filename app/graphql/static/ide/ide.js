// meterkit's GraphiQL page: asks for an API key BEFORE GraphiQL mounts, so its first request
// (the schema's introspection) already carries one: no 401 in the result pane or the console.
// The key goes into the fetcher (and the websocket's connection_init), not into a tab's headers:
// a header typed into the Headers tab (another key, X-Tenant-Id) still overrides it. No `query`
// or `headers` props: GraphiQL restores its saved tabs as they were instead of adding a tab for
// props that differ from them (the duplicate `<untitled>` tab after a reload).
"use strict";

(() => {
  const KEY_STORE = "meterkit.graphiql.key";
  const url = location.href.split(/[?#]/)[0];
  const $ = (selector) => document.querySelector(selector);
  const WELCOME = `# meterkit GraphiQL: your key is sent with every request.
# To act for a tenant with an operator key, put
#   {"X-Tenant-Id": "ten_..."}
# in the Headers tab below (a key written there replaces yours).
# Run with Ctrl-Enter.

query {
  plans { key name period quotas { primitive quota } }
}
`;
  let root = null;

  function showKeyPanel(message) {
    if (root) {
      root.unmount();
      root = null;
    }
    $("#graphiql").hidden = true;
    $("#keybar").hidden = true;
    $("#key-panel").hidden = false;
    $("#key-error").hidden = !message;
    $("#key-error").textContent = message || "";
    $("#key-input").focus();
  }

  // One harmless request with the key: a refused key is told here, before GraphiQL exists.
  async function accepted(key) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${key}` },
      body: JSON.stringify({ query: "{ __typename }" }),
    });
    return response.status !== 401;
  }

  function openIde(key) {
    $("#key-panel").hidden = true;
    $("#keybar").hidden = false;
    $("#key-shown").textContent = `key ${key.slice(0, 10)}…`;
    const graphiql = $("#graphiql");
    graphiql.hidden = false;
    const auth = { Authorization: `Bearer ${key}` };
    const fetcher = GraphiQL.createFetcher({
      url,
      headers: auth,
      subscriptionUrl: url.replace(/^http/, "ws"),
      wsConnectionParams: auth,
    });
    const shared = new URLSearchParams(location.search).get("q"); // a shared link opens its query
    const props = {
      fetcher,
      defaultQuery: WELCOME,
      plugins: [GraphiQLPluginExplorer.explorerPlugin()],
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
      inputValueDeprecation: true,
    };
    if (shared) props.query = shared;
    root = ReactDOM.createRoot(graphiql);
    root.render(React.createElement(GraphiQL, props));
  }

  async function submit(event) {
    event.preventDefault();
    const key = $("#key-input").value.trim();
    $("#open").disabled = true;
    try {
      if (!(await accepted(key))) {
        showKeyPanel("This key was refused: check it, or ask for a new one.");
        return;
      }
    } catch (err) {
      showKeyPanel(`The server could not be reached: ${err.message}`);
      return;
    } finally {
      $("#open").disabled = false;
    }
    sessionStorage.setItem(KEY_STORE, key);
    $("#key-input").value = "";
    openIde(key);
  }

  $("#key-form").addEventListener("submit", submit);
  $("#change-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    showKeyPanel();
  });
  const saved = sessionStorage.getItem(KEY_STORE);
  if (saved) openIde(saved);
  else showKeyPanel();
})();
