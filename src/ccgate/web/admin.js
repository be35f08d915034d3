// ccgate console: the admin pages (GET /admin). Signs in with the admin token (kept in this
// tab's sessionStorage), then manages keys and their policies, shows usage as an SVG chart and
// a table, pages through the audit log (keyset cursors) and shows the server's status.
// Every value from the server (key names, routes, models, errors) is rendered as text.

import {
  ConsoleError, adminTokenStore, api, clear, copyText, el, formatDuration, formatNumber,
  formatTime, formatUsd, keepRowFocus, labelCells, setText, showError, showNote,
} from "./common.js";
import { drawUsageChart, isoDay } from "./admin-chart.js";

const $ = (id) => document.getElementById(id);
const SECTIONS = ["keys", "usage", "audit", "server"];

// Policy fields in the order the forms show them: [field, label, kind, hint].
const POLICY_FIELDS = [
  ["rpm", "Requests per minute", "int", ""],
  ["rpd", "Requests per day", "int", ""],
  ["tokens_per_day", "Tokens per day", "int", "input + output, per UTC day"],
  ["budget_usd_per_month", "Budget (USD per month)", "number", ""],
  ["concurrency", "Concurrent runs", "int", ""],
  ["models", "Models", "list", "comma-separated; globs such as claude-* allowed"],
  ["ip_cidrs", "Client networks", "list", "comma-separated IPs or CIDRs, e.g. 10.0.0.0/8"],
  ["expires_at", "Expires at", "text", "ISO 8601 date or date-time, e.g. 2026-12-31; UTC without a zone"],
];

const state = {
  token: "",
  section: "keys",
  keys: [],
  audit: { filters: null, cursors: [null], page: 0 },
  editing: null,   // the key whose policy the edit dialog shows
  usage: null,     // the last usage answer the chart shows: {rows, group, since, until}
};

// ---- small helpers ---------------------------------------------------------------------------


/** Call an admin route with the token; a 401 on the way means the token no longer works. */
async function adminApi(path, options = {}) {
  try {
    return await api(path, { ...options, token: state.token });
  } catch (error) {
    if (error instanceof ConsoleError && error.status === 401) {
      signOut("The admin token is no longer accepted; sign in again.");
    }
    throw error;
  }
}

function meter(label, value) {
  return el("div", { class: "meter" }, el("dt", { text: label }),
    el("dd", { text: value === null || value === undefined || value === "" ? "—" : value }));
}

function badge(status) {
  return el("span", { class: `badge status-${status}`, text: status });
}

/** A stored timestamp, short enough for a table cell ("—" when absent). */
function shortTime(value) {
  const when = value ? new Date(value) : null;
  if (!when || Number.isNaN(when.getTime())) return value ? String(value) : "—";
  return when.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
}

function cell(value, props = {}) {
  return el("td", { ...props, text: value === null || value === undefined || value === "" ? "—" : value });
}

// ---- signing in --------------------------------------------------------------------------------

async function probe() {
  // No token sent, so this never counts as a wrong guess: 404 admin_disabled means the admin
  // API is off, 401 that it waits for a token.
  try {
    await api("/admin/status");
    showSignIn();
  } catch (error) {
    if (error instanceof ConsoleError && error.type === "admin_disabled") {
      showNote($("probe-status"), "");
      $("disabled").hidden = false;
      return;
    }
    showSignIn();
    if (!(error instanceof ConsoleError && error.status === 401)) showError($("signin-status"), error);
  }
  const stored = adminTokenStore.get();
  if (stored) await signIn(stored);
}

function showSignIn() {
  showNote($("probe-status"), "");
  $("signin").hidden = false;
  $("console").hidden = true;
}

async function signIn(token) {
  const button = $("signin-button");
  button.disabled = true;
  showNote($("signin-status"), "");
  try {
    const { data } = await api("/admin/keys", { token });
    state.token = token;
    adminTokenStore.set(token);
    $("admin-token").value = "";
    $("signin").hidden = true;
    $("console").hidden = false;
    renderKeys(data.data || []);
    selectSection(sectionFromHash());
  } catch (error) {
    adminTokenStore.clear();
    if (error instanceof ConsoleError && error.status === 401) {
      showError($("signin-status"), "Wrong admin token: the server did not accept it.");
    } else {
      showError($("signin-status"), error);
    }
    $("admin-token").focus();
  } finally {
    button.disabled = false;
  }
}

function signOut(message = "Signed out.") {
  state.token = "";
  state.keys = [];
  adminTokenStore.clear();
  clear($("keys-body"));
  clear($("audit-body"));
  clear($("usage-body"));
  hideSecrets();
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  $("console").hidden = true;
  $("signin").hidden = false;
  showNote($("signin-status"), message);
  $("admin-token").focus();
}

// ---- sections ----------------------------------------------------------------------------------

function sectionFromHash() {
  const wanted = location.hash.replace(/^#/, "");
  return SECTIONS.includes(wanted) ? wanted : "keys";
}

function selectSection(name) {
  state.section = name;
  for (const button of $("section-tabs").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.section === name));
  }
  for (const panel of document.querySelectorAll("[data-section-panel]")) {
    panel.hidden = panel.dataset.sectionPanel !== name;
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  if (name === "keys") loadKeys();
  else if (name === "usage") loadUsage();
  else if (name === "audit") loadAudit();
  else if (name === "server") loadServer();
}

// ---- policy forms ------------------------------------------------------------------------------

function buildPolicyFields(container, prefix) {
  const grid = el("div", { class: "policy-grid" });
  for (const [field, label, kind, hint] of POLICY_FIELDS) {
    const id = `${prefix}-${field}`;
    const input = el("input", {
      id, name: field, autocomplete: "off", spellcheck: "false",
      inputmode: kind === "int" ? "numeric" : kind === "number" ? "decimal" : null,
      "aria-describedby": hint ? `${id}-hint` : null,
    });
    grid.append(el("div", { class: kind === "list" || kind === "text" ? "field wide" : "field" },
      el("label", { for: id, text: label }), input,
      hint ? el("p", { class: "hint", id: `${id}-hint`, text: hint }) : null));
  }
  container.append(grid);
}

/** The form's policy as JSON values; empty fields are null. Values that do not parse are sent
 * as typed, so the server's 400 names the field. */
function readPolicy(container) {
  const policy = {};
  for (const [field, , kind] of POLICY_FIELDS) {
    const raw = container.querySelector(`[name="${field}"]`).value.trim();
    if (!raw) {
      policy[field] = null;
    } else if (kind === "int") {
      policy[field] = /^-?\d+$/.test(raw) ? Number(raw) : raw;
    } else if (kind === "number") {
      const value = Number(raw);
      policy[field] = Number.isFinite(value) ? value : raw;
    } else if (kind === "list") {
      policy[field] = raw.split(/[\s,]+/).filter(Boolean);
    } else {
      policy[field] = raw;
    }
  }
  return policy;
}

function fillPolicy(container, policy) {
  for (const [field, , kind] of POLICY_FIELDS) {
    const value = policy?.[field];
    const input = container.querySelector(`[name="${field}"]`);
    if (value === null || value === undefined) input.value = "";
    else if (kind === "list") input.value = value.join(", ");
    else input.value = String(value);
  }
}

function policyText(policy) {
  const parts = [];
  for (const [field] of POLICY_FIELDS) {
    const value = policy?.[field];
    if (value === null || value === undefined) continue;
    const shown = Array.isArray(value) ? value.join(",")
      : field === "expires_at" ? String(value).replace(/T00:00:00(\.0+)?\+00:00$/, "") : value;
    parts.push(`${field}=${shown}`);
  }
  return parts.length ? parts.join(" ") : "no limits";
}

// ---- keys --------------------------------------------------------------------------------------

async function loadKeys() {
  try {
    const { data } = await adminApi("/admin/keys");
    renderKeys(data.data || []);
  } catch (error) {
    showError($("keys-status"), error);
  }
}

function keyStatus(key) {
  if (!key.active) return "revoked";
  return key.expired ? "expired" : "active";
}

function renderKeyRows(body, keys) {
  clear(body);
  for (const key of keys) {
    const actions = el("td", { class: "actions-cell" });
    if (key.active) {
      actions.append(el("div", { class: "actions" },
        el("button", { type: "button", text: "Edit policy", on: { click: () => openEdit(key) } }),
        el("button", { type: "button", text: "Rotate webhook secret",
                       on: { click: () => confirmRotate(key) } }),
        el("button", { type: "button", class: "danger", text: "Revoke",
                       on: { click: () => confirmRevoke(key) } })));
    } else {
      actions.textContent = `revoked ${shortTime(key.revoked_at)}`;
    }
    body.append(el("tr", { dataset: { key: key.name } },
      el("th", { scope: "row", class: "mono", text: key.name }),
      cell(key.prefix, { class: "mono" }),
      cell(shortTime(key.created_at), { title: formatTime(key.created_at) }),
      cell(key.last_used_at ? shortTime(key.last_used_at) : "never",
           { title: key.last_used_at ? formatTime(key.last_used_at) : null }),
      el("td", {}, badge(keyStatus(key)), key.kind === "device" ? " device" : null),
      cell(policyText(key.policy), { class: "policy mono" }),
      actions));
  }
  if (!keys.length) {
    body.append(el("tr", {}, el("td", { colspan: "7", text: "No keys yet: create one above." })));
  }
}

/** Show the keys in the Keys table and offer their names to the usage and audit filters. */
function renderKeys(keys) {
  state.keys = keys;
  const body = $("keys-body");
  keepRowFocus(body, "key", $("refresh-keys"), () => renderKeyRows(body, keys));
  const names = keys.map((key) => key.name);
  const list = $("key-names");
  clear(list);
  for (const name of names) list.append(el("option", { value: name }));
  const select = $("usage-key");
  const chosen = select.value;
  clear(select);
  select.append(el("option", { value: "", text: "All keys" }));
  for (const name of names) select.append(el("option", { value: name, text: name }));
  select.value = names.includes(chosen) ? chosen : "";
}

async function createKey(event) {
  event.preventDefault();
  const status = $("create-status");
  const name = $("key-name").value.trim();
  if (!name) {
    showError(status, "Give the key a name.");
    $("key-name").focus();
    return;
  }
  const body = { name };
  for (const [field, value] of Object.entries(readPolicy($("create-policy")))) {
    if (value !== null) body[field] = value;
  }
  $("create-button").disabled = true;
  try {
    const { data } = await adminApi("/admin/keys", { method: "POST", body });
    $("create-form").reset();
    showNote(status, "");
    showSecrets(`Key ${data.name} created. Copy its secrets now: they are shown only this once.`, [
      ["Key secret", data.key, "Copy key secret"],
      ["Webhook secret", data.webhook_secret, "Copy webhook secret"],
    ]);
    await loadKeys();
  } catch (error) {
    showError(status, error);
    const field = error instanceof ConsoleError && error.param
      ? document.getElementById(error.param === "name" ? "key-name" : `create-${error.param}`) : null;
    field?.focus();
  } finally {
    $("create-button").disabled = false;
  }
}

function showSecrets(note, secrets) {
  const list = $("secret-list");
  clear(list);
  secrets.forEach(([label, value, copyLabel], index) => {
    const id = `secret-${index}`;
    const feedback = el("span", { class: "hint", role: "status" });
    // A read-only text box: it can carry its label as its name (a <code> cannot) and a
    // keyboard user can select it; the value is a property, never markup.
    const box = el("input", { class: "secret mono", id, readonly: true, autocomplete: "off",
                              spellcheck: "false" });
    box.value = value;
    list.append(el("div", { class: "field" },
      el("label", { for: id, text: label }),
      box,
      el("div", { class: "actions" },
        el("button", { type: "button", text: copyLabel, on: { click: async () => {
          setText(feedback, (await copyText(value)) ? "Copied." : "Copying failed: select the text and copy it.");
        } } }),
        feedback)));
  });
  showNote($("secret-note"), note, "ok");
  $("secret-panel").hidden = false;
  $("secret-panel").querySelector("button")?.focus();
}

function hideSecrets() {
  clear($("secret-list"));
  showNote($("secret-note"), "");
  $("secret-panel").hidden = true;
}

async function confirmRevoke(key) {
  // The browser's own confirmation: modal, keyboard-ready, and read out by screen readers.
  if (!window.confirm(`Revoke the key ${key.name}? Its next request gets 401, its queued and `
      + "running jobs are cancelled and its pending webhooks dropped. This cannot be undone; "
      + "the name stays taken.")) return;
  try {
    await adminApi(`/admin/keys/${encodeURIComponent(key.name)}`, { method: "DELETE" });
    showNote($("keys-status"), `Key ${key.name} revoked.`, "ok");
  } catch (error) {
    showError($("keys-status"), error);
  }
  await loadKeys();
}

async function confirmRotate(key) {
  if (!window.confirm(`Give the key ${key.name} a new webhook signing secret? The old one keeps `
      + "signing next to it only for the rotation grace: switch webhook receivers to the new one.")) return;
  try {
    const { data } = await adminApi(
      `/admin/keys/${encodeURIComponent(key.name)}/webhook-secret`, { method: "POST" });
    showSecrets(`New webhook secret of ${data.name}. Copy it now: it is shown only this once.`,
      [["Webhook secret", data.webhook_secret, "Copy webhook secret"]]);
  } catch (error) {
    showError($("keys-status"), error);
  }
}

function openEdit(key) {
  state.editing = key;
  setText($("edit-title"), `Edit policy of ${key.name}`);
  fillPolicy($("edit-policy"), key.policy);
  showNote($("edit-status"), "");
  $("edit-dialog").showModal();
  $("edit-policy").querySelector("input")?.focus();
}

async function saveEdit(event) {
  event.preventDefault();
  const key = state.editing;
  if (!key) return;
  try {
    await adminApi(`/admin/keys/${encodeURIComponent(key.name)}`,
      { method: "PATCH", body: readPolicy($("edit-policy")) });
    $("edit-dialog").close();
    showNote($("keys-status"), `Policy of ${key.name} saved.`, "ok");
    await loadKeys();
  } catch (error) {
    showError($("edit-status"), error);
    const field = error instanceof ConsoleError && error.param ? $(`edit-${error.param}`) : null;
    field?.focus();
  }
}

// ---- usage -------------------------------------------------------------------------------------

function setRange(range) {
  const today = new Date();
  let since = "";
  if (range === "month") since = `${isoDay(today).slice(0, 8)}01`;
  else if (range !== "all") since = isoDay(new Date(today.getTime() - (Number(range) - 1) * 86400000));
  $("usage-since").value = since;
  $("usage-until").value = range === "all" ? "" : isoDay(today);
  for (const button of document.querySelectorAll("[data-range]")) {
    button.setAttribute("aria-pressed", String(button.dataset.range === range));
  }
}

async function loadUsage(event) {
  event?.preventDefault();
  const status = $("usage-status");
  const params = new URLSearchParams({ group_by: $("usage-group").value });
  const since = $("usage-since").value;
  const until = $("usage-until").value;
  if (since) params.set("since", since);
  if (until) params.set("until", until);
  if ($("usage-key").value) params.set("key", $("usage-key").value);
  try {
    const { data } = await adminApi(`/admin/usage?${params}`);
    showNote(status, data.data.length ? "" : "No usage in this range.");
    renderUsage(data, since, until);
  } catch (error) {
    showError(status, error);
  }
}

function renderUsage(data, since, until) {
  const group = data.group_by;
  setText($("usage-group-head"), group === "model" ? "Model" : "Day");
  const body = $("usage-body");
  clear(body);
  for (const row of data.data) {
    body.append(el("tr", {},
      el("th", { scope: "row", class: "mono", text: row.key }),
      cell(group === "model" ? (row.model ?? "(none)") : row.day, { class: "mono" }),
      cell(formatNumber(row.requests)), cell(formatNumber(row.input_tokens)),
      cell(formatNumber(row.output_tokens)), cell(formatUsd(row.cost_usd)),
      cell(formatNumber(row.errors))));
  }
  state.usage = { rows: data.data, group, since, until };
  renderChart();
}

/** Draw the last usage answer with the chosen metric, as wide as its box. */
function renderChart() {
  if (!state.usage) return;
  const metric = $("usage-metric");
  drawUsageChart($("usage-chart"), $("usage-legend"), {
    ...state.usage, metric: metric.value, metricLabel: metric.selectedOptions[0].textContent });
}

// ---- audit log ---------------------------------------------------------------------------------

function auditFilters() {
  return {
    key: $("audit-key").value.trim(),
    status: $("audit-status").value.trim(),
    door: $("audit-door").value,
    limit: $("audit-limit").value,
  };
}

function applyAuditFilters(event) {
  event?.preventDefault();
  state.audit = { filters: auditFilters(), cursors: [null], page: 0 };
  loadAudit({ keep: true });
}

async function loadAudit({ keep = false } = {}) {
  if (!keep || !state.audit.filters) {
    state.audit = { filters: auditFilters(), cursors: [null], page: 0 };
  }
  const { filters, cursors, page } = state.audit;
  const params = new URLSearchParams({ limit: filters.limit });
  for (const name of ["key", "status", "door"]) if (filters[name]) params.set(name, filters[name]);
  if (cursors[page]) params.set("cursor", cursors[page]);
  const note = $("audit-note");
  try {
    const { data } = await adminApi(`/admin/audit?${params}`);
    cursors.length = page + 1;
    if (data.next_cursor) cursors.push(data.next_cursor);
    renderAudit(data.data);
    const first = page * Number(filters.limit) + 1;
    showNote(note, data.data.length
      ? `Rows ${formatNumber(first)} to ${formatNumber(first + data.data.length - 1)}, newest first${data.next_cursor ? "" : " (last page)"}.`
      : "No audit rows match.");
  } catch (error) {
    showError(note, error);
    clear($("audit-body"));
    cursors.length = page + 1;
  }
  $("audit-first").disabled = page === 0;
  $("audit-previous").disabled = page === 0;
  $("audit-next").disabled = cursors.length <= page + 1;
}

function auditPage(step) {
  if (step === 0) state.audit.page = 0;
  else state.audit.page = Math.max(0, state.audit.page + step);
  loadAudit({ keep: true });
}

function renderAudit(rows) {
  const body = $("audit-body");
  clear(body);
  for (const row of rows) {
    const tokens = row.input_tokens === null && row.output_tokens === null ? null
      : `${formatNumber(row.input_tokens)} / ${formatNumber(row.output_tokens)}`;
    body.append(el("tr", {},
      cell(formatTime(row.at)),
      cell(row.key_name, { class: "mono" }),
      cell(row.door),
      cell(row.route, { class: "mono" }),
      cell(row.http_status),
      row.job_status ? el("td", {}, badge(row.job_status)) : cell(null),
      cell(row.model, { class: "mono" }),
      cell(formatDuration(row.duration_ms)),
      cell(tokens),
      cell(row.cost_usd === null ? null : formatUsd(row.cost_usd)),
      cell(row.error_type, { class: "mono" }),
      cell(row.client_ip, { class: "mono" }),
      cell(row.request_id, { class: "mono" })));
  }
}

// ---- server ------------------------------------------------------------------------------------

async function loadServer() {
  const status = $("server-status");
  try {
    const { data } = await adminApi("/admin/status");
    renderServer(data);
    showNote(status, data.status === "ready" ? "Ready: jobs can run."
      : "Not ready: see the problems below.", data.status === "ready" ? "ok" : "error");
  } catch (error) {
    showError(status, error);
  }
}

function renderServer(data) {
  const ready = $("server-ready");
  clear(ready);
  ready.append(meter("Status", data.status === "ready" ? "ready" : "not ready"),
    meter("Version", data.version), meter("Store", data.store), meter("Backend", data.backend));
  if (data.claude) {
    ready.append(meter("Claude CLI", data.claude.path || "not found"),
      meter("CLI version", data.claude.version || "unknown"));
  }
  const problems = $("server-problems");
  clear(problems);
  for (const problem of data.problems || []) problems.append(el("li", { class: "notice error", text: problem }));

  const queue = $("server-queue");
  clear(queue);
  const q = data.queue || {};
  queue.append(meter("Queued (all nodes)", formatNumber(q.queued)),
    meter("Running (all nodes)", formatNumber(q.processing)),
    meter("Running here", `${formatNumber(q.running_here)} of ${formatNumber(q.concurrency)}`),
    meter("Queue size", formatNumber(q.queue_size)),
    meter("Accepting jobs", q.accepting ? "yes" : "no (shutting down)"));

  const circuit = $("server-circuit");
  clear(circuit);
  const c = data.circuit || {};
  if (c.enabled) {
    circuit.append(meter("State", c.state),
      meter("Failures in a row", `${formatNumber(c.consecutive_failures)} of ${formatNumber(c.threshold)}`),
      meter("Cooldown", `${c.cooldown_secs} s`),
      meter("Opened at", c.opened_at ? formatTime(c.opened_at) : "—"),
      meter("Retry after", c.retry_after_secs ? `${c.retry_after_secs} s` : "—"));
  } else {
    circuit.append(meter("State", `none on the ${c.backend || data.backend} backend`));
  }
  $("reset-circuit").hidden = !c.enabled || c.state === "closed";

  const pool = $("server-pool");
  clear(pool);
  const p = data.pool;
  if (!p) {
    pool.append(meter("Mode", "off"));
  } else {
    pool.append(meter("Mode", p.mode), meter("Idle", formatNumber(p.idle)),
      meter("Busy", formatNumber(p.busy)), meter("Starting", formatNumber(p.starting)),
      meter("Keys served", formatNumber(p.keys)), meter("Max processes", formatNumber(p.max_processes)),
      meter("Min idle", formatNumber(p.min_idle)));
    const shown = new Set(["mode", "idle", "busy", "starting", "keys", "max_processes", "min_idle"]);
    for (const [name, value] of Object.entries(p)) {
      if (!shown.has(name)) pool.append(meter(name.replaceAll("_", " "), formatNumber(value)));
    }
  }
}

async function resetCircuit() {
  try {
    await adminApi("/admin/circuit/reset", { method: "POST" });
  } catch (error) {
    showError($("server-status"), error);
    return;
  }
  await loadServer();
}

// ---- wiring ------------------------------------------------------------------------------------

function wire() {
  for (const id of ["keys", "usage", "audit"]) labelCells($(id));
  buildPolicyFields($("create-policy"), "create");
  buildPolicyFields($("edit-policy"), "edit");
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("admin-token").value.trim();
    if (!token) {
      showError($("signin-status"), "Paste the admin token first.");
      $("admin-token").focus();
      return;
    }
    signIn(token);
  });
  $("signout").addEventListener("click", () => signOut());
  for (const button of $("section-tabs").querySelectorAll("button")) {
    button.addEventListener("click", () => selectSection(button.dataset.section));
  }
  window.addEventListener("hashchange", () => {
    if (state.token && sectionFromHash() !== state.section) selectSection(sectionFromHash());
  });
  $("create-form").addEventListener("submit", createKey);
  $("refresh-keys").addEventListener("click", loadKeys);
  $("secret-done").addEventListener("click", () => {
    hideSecrets();
    $("key-name").focus();
  });
  $("edit-form").addEventListener("submit", saveEdit);
  $("edit-cancel").addEventListener("click", () => $("edit-dialog").close());
  $("usage-form").addEventListener("submit", loadUsage);
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (state.section === "usage") renderChart(); }, 150);
  });
  for (const button of document.querySelectorAll("[data-range]")) {
    button.addEventListener("click", () => {
      setRange(button.dataset.range);
      loadUsage();
    });
  }
  for (const id of ["usage-group", "usage-key"]) $(id).addEventListener("change", () => loadUsage());
  $("usage-metric").addEventListener("change", () => renderChart());
  for (const id of ["usage-since", "usage-until"]) {
    $(id).addEventListener("change", () => {
      for (const button of document.querySelectorAll("[data-range]")) button.setAttribute("aria-pressed", "false");
    });
  }
  setRange("30");
  $("audit-form").addEventListener("submit", applyAuditFilters);
  $("audit-door").addEventListener("change", applyAuditFilters);
  $("audit-limit").addEventListener("change", applyAuditFilters);
  $("audit-first").addEventListener("click", () => auditPage(0));
  $("audit-previous").addEventListener("click", () => auditPage(-1));
  $("audit-next").addEventListener("click", () => auditPage(1));
  $("refresh-server").addEventListener("click", loadServer);
  $("reset-circuit").addEventListener("click", resetCircuit);
  probe();
}

wire();
