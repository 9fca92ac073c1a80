// The relay dashboard. It reads only the admin JSON API (/api/...), sending the admin
// token kept for this tab (sessionStorage). Whatever the API says goes into the page as
// text (textContent), never as markup.

const TOKEN_KEY = "relay-admin-token";
const POLL_MS = 2000;
const EVENTS_KEPT = 200; // newest events kept on the page
const EVENTS_PAGE = 1000; // the API's largest page
const EVENTS_PAGES_PER_POLL = 20; // catching up on a busy log spreads over several polls
const EVENTS_BACK_MS = 3600 * 1000; // the page opens on the last hour of the log

const $ = (id) => document.getElementById(id);

/** The relay refused the admin token (401). */
class TokenRefused extends Error {}

/** Any other failed API call, with what the relay said about it. */
class ApiError extends Error {
  constructor(status, code, message, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }

  describe() {
    return this.requestId ? `${this.message} (request ${this.requestId})` : this.message;
  }
}

// The Date header of the latest answer: the relay's clock, which the event ids follow.
let serverDate = null;

/** Call the admin API; the parsed JSON answer, or null for 204. */
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) ?? ""}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, "unreachable", `the relay did not answer (${error.message})`, null);
  }
  serverDate = response.headers.get("Date") ?? serverDate;
  if (response.status === 401) throw new TokenRefused("the relay refused the admin token");
  if (response.status === 204) return null;
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null; // not JSON (a proxy's error page): the status says enough
  }
  if (!response.ok) {
    const error = payload?.error ?? {};
    throw new ApiError(
      response.status,
      error.code ?? `http_${response.status}`,
      error.message ?? `HTTP ${response.status}`,
      error.request_id ?? null,
    );
  }
  return payload;
}

// ---- small DOM helpers (text only) ----

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function setText(node, value) {
  const text = value === undefined || value === null ? "" : String(value);
  if (node.textContent !== text) node.textContent = text;
}

/** An RFC 3339 UTC time as "2024-05-01 12:00:00 UTC" (the same for every reader). */
function when(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace(/Z$/, " UTC") : "";
}

/** Only http(s) URLs become links. */
function safeHref(url) {
  return typeof url === "string" && /^https?:\/\//i.test(url) ? url : null;
}

function say(message, isError = false) {
  const status = $("status");
  setText(status, message);
  status.classList.toggle("error", isError);
}

/**
 * Keep a table body's rows in step with ``items`` (one row per key), updating rows in
 * place: a row the user is on (a focused button) stays where it is between polls.
 */
function syncRows(tbody, items, keyOf, build, update) {
  const wanted = new Set(items.map(keyOf));
  for (const row of [...tbody.rows]) {
    if (!wanted.has(row.dataset.key)) row.remove();
  }
  const existing = new Map([...tbody.rows].map((row) => [row.dataset.key, row]));
  items.forEach((item, index) => {
    const key = keyOf(item);
    let row = existing.get(key);
    if (!row) {
      row = build(item);
      row.dataset.key = key;
    }
    update(row, item);
    if (tbody.rows[index] !== row) tbody.insertBefore(row, tbody.rows[index] ?? null);
  });
}

function rowOfCells(count) {
  const row = document.createElement("tr");
  for (let i = 0; i < count; i += 1) row.append(document.createElement("td"));
  return row;
}

// ---- session ----

let session = 0; // bumped at each sign-in and sign-out: polls of an old session stop
let pollTimer = null;

function showLogin(message) {
  session += 1;
  clearTimeout(pollTimer);
  sessionStorage.removeItem(TOKEN_KEY);
  hideCreated();
  $("dashboard").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  setText($("login-message"), message);
  $("token").value = "";
  $("token").focus();
}

/** Whatever went wrong, said where the operator looks; a refused token signs out. */
function failed(what, error) {
  if (error instanceof TokenRefused) {
    showLogin("The relay refused the admin token. Sign in again.");
  } else if (error instanceof ApiError) {
    say(`${what}: ${error.describe()}`, true);
  } else {
    say(`${what}: ${error}`, true);
    throw error; // a bug in this page: the console shows where
  }
}

async function start(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  const hosts = await api("GET", "/api/hosts"); // checks the token before showing anything
  session += 1;
  const mine = session;
  setText($("login-message"), "");
  $("token").value = "";
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("sign-out").hidden = false;
  say("");
  renderHosts(hosts);
  resetEvents();
  loadRecords(); // on sign-in and on demand only: listing records calls the DNS provider
  poll(mine);
}

function schedule(mine, delay) {
  clearTimeout(pollTimer); // at most one poll waits at any time
  pollTimer = setTimeout(() => poll(mine), delay);
}

async function poll(mine) {
  // A hidden tab does not poll; it catches up when shown (visibilitychange below).
  if (mine !== session || document.hidden) return;
  try {
    await refresh();
    if ($("status").classList.contains("error")) say("");
  } catch (error) {
    if (mine === session) failed("Refresh failed", error);
  }
  if (mine === session && !document.hidden) schedule(mine, POLL_MS);
}

async function refresh() {
  const [hosts, machines] = await Promise.all([
    api("GET", "/api/hosts"),
    api("GET", "/api/machines"),
  ]);
  renderHosts(hosts);
  renderMachines(machines);
  await loadEvents();
}

// ---- hosts ----

const hostOfRow = new WeakMap();

function buildHostRow() {
  const row = rowOfCells(10);
  const [nameCell, urlCell, , , , , , , , actions] = row.cells;
  nameCell.append(el("span", null, "name"), el("br"), el("span", null, "hint slug"));
  urlCell.append(el("a"));
  const remove = el("button", "Remove", "danger");
  remove.type = "button";
  remove.addEventListener("click", () => removeHost(hostOfRow.get(row)));
  actions.append(remove);
  return row;
}

function updateHostRow(row, host) {
  hostOfRow.set(row, host);
  const [name, url, status, since, reason, machine, epoch, agent, dns, actions] = row.cells;
  setText(name.querySelector(".name"), host.name);
  setText(name.querySelector(".slug"), host.slug);
  const link = url.querySelector("a");
  setText(link, host.url);
  const href = safeHref(host.url);
  if (href) link.href = href;
  else link.removeAttribute("href");
  setText(status, host.online ? "online" : "offline");
  status.className = host.online ? "online" : "offline";
  if (host.online) setText(since, when(host.last_connected_at));
  else setText(since, host.last_disconnected_at ? when(host.last_disconnected_at) : "never connected");
  setText(reason, host.online ? "" : host.disconnect_reason);
  setText(machine, host.machine_id);
  setText(epoch, host.epoch);
  setText(agent, host.agent_version);
  agent.title = host.remote_addr ? `from ${host.remote_addr}` : "";
  renderDns(dns, host.dns);
  actions.firstChild.setAttribute("aria-label", `Remove host ${host.name} (${host.slug})`);
}

function renderDns(cell, dns) {
  const key = JSON.stringify(dns ?? null);
  if (cell.dataset.dns === key) return;
  cell.dataset.dns = key;
  const state = dns?.state ?? "unknown";
  const parts = [el("span", state, state === "error" ? "dns-error" : null)];
  if (dns?.records?.length) {
    const list = el("ul");
    for (const record of dns.records) list.append(el("li", record));
    parts.push(list);
  }
  if (dns?.last_error) {
    parts.push(el("div", `${dns.last_error} (${when(dns.last_error_at)})`, "dns-error"));
  }
  cell.replaceChildren(...parts);
}

function renderHosts(hosts) {
  syncRows($("hosts").tBodies[0], hosts, (h) => h.id, buildHostRow, updateHostRow);
  $("hosts-empty").hidden = hosts.length > 0;
}

async function refreshHosts() {
  renderHosts(await api("GET", "/api/hosts"));
}

async function removeHost(host) {
  const question =
    `Remove host ${host.name} (${host.slug})? Its tunnel is closed, ` +
    "its DNS records are deleted and its slug is freed.";
  if (!window.confirm(question)) return;
  try {
    await api("DELETE", `/api/hosts/${encodeURIComponent(host.id)}`);
    say(`Removed host ${host.name} (${host.slug}).`);
    $("hosts-title").focus(); // its row (and the focused button) is gone
    await refreshHosts();
  } catch (error) {
    failed(`Could not remove host ${host.name}`, error);
  }
}

function showCreated(created) {
  setText($("created-host"), `${created.name} (${created.slug}, ${created.id})`);
  setText($("created-url"), created.url);
  setText($("created-token"), created.token);
  setText(
    $("created-command"),
    `relay agent --server ${window.location.origin} --token ${created.token} ` +
      "--to http://127.0.0.1:PORT",
  );
  $("created").hidden = false;
  $("created").focus();
}

function hideCreated() {
  // The token leaves the page with the notice.
  for (const id of ["created-host", "created-url", "created-token", "created-command"]) {
    setText($(id), "");
  }
  $("created").hidden = true;
}

// ---- machines ----

function renderMachines(machines) {
  syncRows(
    $("machines").tBodies[0],
    machines,
    (m) => m.machine_id,
    () => rowOfCells(5),
    (row, m) => {
      const [id, address, state, tunnels, seen] = row.cells;
      setText(id, m.machine_id);
      setText(address, m.address);
      setText(state, m.state);
      setText(tunnels, m.tunnels);
      setText(seen, when(m.last_seen));
    },
  );
}

// ---- events ----

let eventsAfter = null; // the `after` of the next poll

function resetEvents() {
  eventsAfter = null;
  $("events").replaceChildren();
}

async function loadEvents() {
  if (eventsAfter === null) {
    // Entry ids are the store's milliseconds; the relay's Date header is close to them.
    const now = Date.parse(serverDate ?? "") || Date.now();
    eventsAfter = `${now - EVENTS_BACK_MS}-0`;
  }
  for (let pages = 0; pages < EVENTS_PAGES_PER_POLL; pages += 1) {
    const query = `after=${encodeURIComponent(eventsAfter)}&limit=${EVENTS_PAGE}`;
    const page = await api("GET", `/api/events?${query}`);
    addEvents(page.events);
    eventsAfter = page.next ?? eventsAfter;
    if (page.events.length < EVENTS_PAGE) break;
  }
}

const EVENT_FRAME = new Set(["id", "kind", "at", "version"]);

function eventDetails(event) {
  return Object.entries(event)
    .filter(([key]) => !EVENT_FRAME.has(key))
    .map(([key, value]) => {
      if (value === null) return `${key}=-`;
      return `${key}=${typeof value === "object" ? JSON.stringify(value) : value}`;
    })
    .join(" ");
}

function addEvents(events) {
  const list = $("events");
  for (const event of events) {
    const item = el("li");
    const at = el("time", when(event.at));
    at.dateTime = event.at ?? "";
    item.append(at, el("span", event.kind, "kind"), el("span", eventDetails(event)));
    list.prepend(item); // newest first
  }
  while (list.children.length > EVENTS_KEPT) list.lastElementChild.remove();
}

// ---- DNS ----

function dnsEnabled(enabled) {
  $("dns-disabled").hidden = enabled;
  $("dns-controls").hidden = !enabled;
  $("dns-records").hidden = !enabled;
  $("dns-listed").hidden = !enabled;
  if (!enabled) $("dns-report").hidden = true;
}

async function loadRecords() {
  try {
    const answer = await api("GET", "/api/dns/records");
    dnsEnabled(true);
    setText($("dns-listed"), `Listed at ${new Date().toLocaleTimeString()}; reload to see newer.`);
    const body = $("dns-records").tBodies[0];
    body.replaceChildren(
      ...answer.records.map((r) => {
        const row = rowOfCells(6);
        const values = [r.name, r.type, r.content, r.ttl, r.ours ? "yes" : "no", r.zone];
        values.forEach((value, i) => setText(row.cells[i], value));
        return row;
      }),
    );
  } catch (error) {
    if (error instanceof ApiError && error.code === "dns_disabled") dnsEnabled(false);
    else failed("Could not read the DNS records", error);
  }
}

const REPORT_LABELS = [
  ["created", "Would create", "Created"],
  ["updated", "Would update", "Updated"],
  ["deleted", "Would delete", "Deleted"],
  ["already_synced", "Already synced", "Already synced"],
  ["skipped", "Skipped", "Skipped"],
  ["errors", "Errors", "Errors"],
];

function showReport(report, dryRun) {
  setText(
    $("dns-report-title"),
    dryRun ? "Dry run: what a sync would do (nothing was changed)" : "Sync done",
  );
  const counts = [];
  for (const [key, ifDry, ifDone] of REPORT_LABELS) {
    counts.push(el("dt", dryRun ? ifDry : ifDone), el("dd", report[key] ?? 0));
  }
  $("dns-counts").replaceChildren(...counts);
  const changes = report.changes ?? [];
  const items = changes.length ? changes.map((line) => el("li", line)) : [el("li", "No changes.")];
  $("dns-changes").replaceChildren(...items);
  $("dns-report").hidden = false;
}

async function runSync(dryRun) {
  const question =
    "Run a full DNS sync now? It creates missing records, fixes drifted ones and " +
    "deletes orphaned records of this relay (never others').";
  if (!dryRun && !window.confirm(question)) return;
  const buttons = [$("dns-preview"), $("dns-sync")];
  for (const button of buttons) button.disabled = true;
  try {
    const report = await api("POST", dryRun ? "/api/dns/sync?dry_run=1" : "/api/dns/sync");
    showReport(report, dryRun);
    if (!dryRun) {
      await loadRecords();
      await refreshHosts();
    }
  } catch (error) {
    failed(dryRun ? "The dry run failed" : "The sync failed", error);
  } finally {
    for (const button of buttons) button.disabled = false;
  }
}

// ---- wiring ----

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) {
    setText($("login-message"), "Enter the admin token.");
    return;
  }
  if (!/^[\x21-\x7e]+$/.test(token)) {
    setText($("login-message"), "An admin token is printable ASCII without spaces.");
    return;
  }
  const button = event.submitter ?? $("login-form").querySelector("button");
  button.disabled = true;
  try {
    await start(token);
  } catch (error) {
    if (error instanceof TokenRefused) showLogin("The relay refused this token.");
    else if (error instanceof ApiError) showLogin(`Could not sign in: ${error.describe()}`);
    else throw error;
  } finally {
    button.disabled = false;
  }
});

$("sign-out").addEventListener("click", () => showLogin("Signed out."));

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const name = $("host-name").value.trim();
  const slug = $("host-slug").value.trim();
  if (!name) {
    say("A host needs a name.", true);
    $("host-name").focus();
    return;
  }
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const created = await api("POST", "/api/hosts", slug ? { name, slug } : { name });
    form.reset();
    say(`Created host ${created.name} (${created.slug}).`);
    showCreated(created);
    await refreshHosts();
  } catch (error) {
    failed("Could not create the host", error);
  } finally {
    button.disabled = false;
  }
});

$("created-done").addEventListener("click", () => {
  hideCreated();
  $("host-name").focus(); // the notice (and the focused button) is gone
});

$("created-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("created-token").textContent);
    say("Token copied.");
  } catch {
    say("Copying failed here: select the token and copy it by hand.", true);
  }
});

$("dns-preview").addEventListener("click", () => runSync(true));
$("dns-sync").addEventListener("click", () => runSync(false));
$("dns-reload").addEventListener("click", loadRecords);

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && !$("dashboard").hidden) schedule(session, 0);
});

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) {
  start(saved).catch((error) => {
    if (error instanceof TokenRefused) {
      showLogin("The relay refused the saved admin token. Sign in again.");
    } else if (error instanceof ApiError) {
      showLogin(`Could not reach the relay: ${error.describe()}`);
    } else {
      throw error;
    }
  });
} else {
  $("token").focus();
}
