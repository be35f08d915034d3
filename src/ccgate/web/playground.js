// ccgate console: the playground (GET /). Runs a prompt as an async job, streams it over the
// job's SSE route, keeps a job history, shows the key's limits and "Copy as" snippets.
// Every value from the server (answers, errors, stored fields) is rendered as text.

import {
  ConsoleError, api, apiKeyStore, clear, copyText, el, formatDuration, formatNumber,
  formatTime, formatUsd, keepRowFocus, labelCells, setText, showError, showNote, streamEvents,
} from "./common.js";

const $ = (id) => document.getElementById(id);
const JOBS_PER_PAGE = 10;
// The SDKs need a model name; with none picked, the snippets name ccgate's own default.
const DEFAULT_SDK_MODEL = "sonnet";
const RATE_HEADERS = [
  "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
  "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
];

const state = {
  running: null,        // {jobId, controller} of the job being watched
  session: null,        // {id, model} of the last completed run, for a follow-up
  rate: null,           // rate-limit headers of the last admitted request
  usage: null,          // GET /api/v1/usage
  jobsOffset: 0,
  snippet: "curl",
  detailJob: null,      // the job opened from the history
};

function key() {
  return $("api-key").value.trim();
}


// ---- the key ---------------------------------------------------------------------------------

let appliedKey = null;
let keyTimer = null;

function keyChanged() {
  clearTimeout(keyTimer);
  const value = key();
  if (value === appliedKey) return;
  appliedKey = value;
  if (value) apiKeyStore.set(value);
  else apiKeyStore.clear();
  state.session = null;
  state.rate = null;
  renderSession();
  refreshAll();
}

function forgetKey() {
  apiKeyStore.clear();
  $("api-key").value = "";
  keyChanged();
  $("api-key").focus();
}

async function refreshAll() {
  renderSnippet();
  if (!key()) {
    showNote($("key-status"), "");
    clear($("jobs-body"));
    clear($("limits"));
    $("limits-hint").hidden = false;
    return;
  }
  const ok = await loadModels();
  if (ok) await Promise.all([loadUsage(), loadJobs()]);
}

async function loadModels() {
  const select = $("model");
  const chosen = select.value;
  try {
    const { data } = await api("/v1/models", { token: key() });
    clear(select);
    select.append(el("option", { value: "", text: "Server default" }));
    for (const model of data.data || []) {
      const label = model.display_name && model.display_name !== model.id
        ? `${model.id} (${model.display_name})` : model.id;
      select.append(el("option", { value: model.id, text: label }));
    }
    select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
    showNote($("key-status"), "Key accepted.", "ok");
    return true;
  } catch (error) {
    showError($("key-status"), error);
    return false;
  }
}

// ---- limits ----------------------------------------------------------------------------------

async function loadUsage() {
  if (!key()) return;
  try {
    const { data } = await api("/api/v1/usage", { token: key() });
    state.usage = data;
  } catch (error) {
    state.usage = null;
    showError($("key-status"), error);
  }
  renderLimits();
}

function rememberRate(response) {
  const rate = {};
  for (const name of RATE_HEADERS) {
    const value = response.headers.get(name);
    if (value !== null) rate[name] = value;
  }
  if (Object.keys(rate).length) state.rate = rate;
}

function meter(label, value) {
  return el("div", { class: "meter" }, el("dt", { text: label }), el("dd", { text: value }));
}

function renderLimits() {
  const list = $("limits");
  clear(list);
  const usage = state.usage;
  const rate = state.rate;
  if (!usage) {
    $("limits-hint").hidden = false;
    return;
  }
  const policy = usage.policy || {};
  const used = usage.used || {};
  const left = usage.remaining || {};
  if (rate && rate["x-ratelimit-limit-requests"]) {
    list.append(meter("Requests left",
      `${rate["x-ratelimit-remaining-requests"]} of ${rate["x-ratelimit-limit-requests"]}` +
      (rate["x-ratelimit-reset-requests"] ? ` · frees in ${rate["x-ratelimit-reset-requests"]}` : "")));
  }
  if (policy.rpm !== null && policy.rpm !== undefined) list.append(meter("Requests per minute", formatNumber(policy.rpm)));
  if (policy.rpd !== null && policy.rpd !== undefined) list.append(meter("Requests per day", formatNumber(policy.rpd)));
  if (policy.tokens_per_day !== null && policy.tokens_per_day !== undefined) {
    list.append(meter("Tokens left today",
      `${formatNumber(left.tokens_per_day)} of ${formatNumber(policy.tokens_per_day)}`));
  } else {
    list.append(meter("Tokens today", formatNumber(used.tokens_today)));
  }
  if (policy.budget_usd_per_month !== null && policy.budget_usd_per_month !== undefined) {
    list.append(meter("Budget left this month",
      `${formatUsd(left.budget_usd_per_month)} of ${formatUsd(policy.budget_usd_per_month)}`));
  } else {
    list.append(meter("Spent this month", formatUsd(used.cost_usd_this_month)));
  }
  if (policy.concurrency !== null && policy.concurrency !== undefined) {
    list.append(meter("Running", `${formatNumber(used.running)} of ${formatNumber(policy.concurrency)}`));
  } else {
    list.append(meter("Running", formatNumber(used.running)));
  }
  if (policy.models) list.append(meter("Models", policy.models.join(", ")));
  if (policy.expires_at) list.append(meter("Expires", formatTime(policy.expires_at)));
  const limited = ["rpm", "rpd", "tokens_per_day", "budget_usd_per_month", "concurrency"]
    .some((name) => policy[name] !== null && policy[name] !== undefined);
  $("limits-hint").hidden = false;
  setText($("limits-hint"), limited ? `Key ${usage.key}.` : `Key ${usage.key} has no limits.`);
}

// ---- running a prompt ------------------------------------------------------------------------

function requestBody() {
  const body = { prompt: $("prompt").value };
  const model = $("model").value;
  if (model) body.model = model;
  const system = $("system-prompt").value;
  if (system.trim()) body.system_prompt = system;
  const format = document.querySelector('input[name="format"]:checked').value;
  if (format !== "text") body.response_format = format;
  const timeout = $("timeout").value.trim();
  if (timeout) body.timeout_secs = Number(timeout);
  if (state.session && $("continue-session").checked) body.session_id = state.session.id;
  return body;
}

function setRunning(running) {
  $("run").disabled = running;
  $("cancel").disabled = !running;
}

function resetOutput() {
  clear($("output"));
  clear($("result-facts"));
}

async function run(event) {
  event?.preventDefault();
  const status = $("run-status");
  if (!key()) {
    showNote(status, "Paste an API key first.", "error");
    $("api-key").focus();
    return;
  }
  if (!$("prompt").value.trim()) {
    showNote(status, "Write a prompt first.", "error");
    $("prompt").focus();
    return;
  }
  if (state.running) return;
  const body = requestBody();
  resetOutput();
  setRunning(true);
  showNote(status, "Submitting…");
  let job;
  try {
    const { data, response } = await api("/api/v1/jobs", { token: key(), method: "POST", body });
    job = data;
    rememberRate(response);
  } catch (error) {
    setRunning(false);
    showError(status, error);
    loadUsage();
    return;
  }
  await watch(job.job_id);
  loadJobs();
  loadUsage();
}

/** Stream a job's events into the Output log until its result; used by Run and by Open. */
async function watch(jobId) {
  const controller = new AbortController();
  state.running = { jobId, controller };
  setRunning(true);
  const status = $("run-status");
  const output = $("output");
  showNote(status, `Job ${jobId} queued.`);
  try {
    const result = await streamEvents(`/api/v1/jobs/${encodeURIComponent(jobId)}/sse`, {
      token: key(),
      signal: controller.signal,
      onReconnect: (n) => showNote(status, `Connection lost; resuming (attempt ${n})…`),
      onEvent: ({ event, data }) => {
        if (event === "status") {
          if (data.restarted) clear(output);
          showNote(status, `Job ${jobId} ${data.status}${data.attempt > 1 ? ` (attempt ${data.attempt})` : ""}.`);
        } else if (event === "chunk" && typeof data.text === "string") {
          output.append(document.createTextNode(data.text));
          output.scrollTop = output.scrollHeight;
        }
      },
    });
    renderResult(result);
  } catch (error) {
    if (error?.name !== "AbortError") showError(status, error);
  } finally {
    // Another job may be watched by now (Open aborts this stream): leave its buttons alone.
    if (state.running?.jobId === jobId) {
      state.running = null;
      setRunning(false);
    }
  }
}

function renderResult(job) {
  const status = $("run-status");
  const output = $("output");
  if (job.result !== null && job.result !== undefined) {
    setText(output, typeof job.result === "string" ? job.result : JSON.stringify(job.result, null, 2));
  }
  if (job.status === "completed") {
    const parse = job.result_parse_error ? ` The answer is not JSON: ${job.result_parse_error}` : "";
    showNote(status, `Completed in ${formatDuration(job.duration_ms)}.${parse}`, parse ? "error" : "ok");
  } else if (job.error) {
    showNote(status, `${job.status}: ${job.error.type}: ${job.error.message}`, "error");
  } else {
    showNote(status, `Job ${job.status}.`, job.status === "cancelled" ? "" : "error");
  }
  const facts = $("result-facts");
  clear(facts);
  const usage = job.usage || {};
  facts.append(
    meter("Status", job.status),
    meter("Job", job.job_id),
    meter("Session", job.session_id || "—"),
    meter("Model", job.model || "—"),
    meter("Duration", formatDuration(job.duration_ms)),
    meter("Input tokens", formatNumber(usage.input_tokens)),
    meter("Output tokens", formatNumber(usage.output_tokens)),
    meter("Cost", formatUsd(job.cost_usd)),
  );
  if (job.status === "completed" && job.session_id) {
    state.session = { id: job.session_id };
    $("continue-session").checked = true;
  }
  renderSession();
}

function renderSession() {
  const field = $("session-field");
  field.hidden = !state.session;
  setText($("session-hint"), state.session ? `Session ${state.session.id}` : "");
  renderSnippet();
}

async function cancel() {
  const running = state.running;
  if (!running) return;
  $("cancel").disabled = true;
  try {
    await api(`/api/v1/jobs/${encodeURIComponent(running.jobId)}/cancel`,
              { token: key(), method: "POST" });
  } catch (error) {
    // 409: it ended first; the stream still brings its result.
    if (!(error instanceof ConsoleError && error.status === 409)) showError($("run-status"), error);
  }
}

// ---- job history -----------------------------------------------------------------------------

async function loadJobs() {
  const body = $("jobs-body");
  const note = $("jobs-status");
  if (!key()) return;
  const params = new URLSearchParams({ limit: String(JOBS_PER_PAGE), offset: String(state.jobsOffset) });
  const filter = $("status-filter").value;
  if (filter) params.set("status", filter);
  try {
    const { data } = await api(`/api/v1/jobs?${params}`, { token: key() });
    keepRowFocus(body, "jobId", $("refresh-jobs"), () => {
      clear(body);
      for (const job of data.jobs) body.append(jobRow(job));
      if (!data.jobs.length) {
        body.append(el("tr", {}, el("td", { colspan: "6", text: filter ? `No ${filter} jobs.` : "No jobs yet." })));
      }
    });
    const last = Math.min(data.total, state.jobsOffset + data.jobs.length);
    showNote(note, data.total ? `Jobs ${state.jobsOffset + 1}–${last} of ${data.total}.` : "");
    $("newer-jobs").disabled = state.jobsOffset === 0;
    $("older-jobs").disabled = last >= data.total;
  } catch (error) {
    showError(note, error);
  }
}

function jobRow(job) {
  const row = el("tr", { dataset: { jobId: job.job_id } },
    el("td", { class: "mono", text: job.job_id }),
    el("td", {}, el("span", { class: `badge status-${job.status}`, text: job.status })),
    el("td", { text: job.model || "—" }),
    el("td", { text: formatTime(job.created_at) }),
    el("td", { text: formatDuration(job.duration_ms) }),
    el("td", {}, el("div", { class: "actions" },
      el("button", { type: "button", text: "Open", on: { click: () => openJob(job.job_id) } }),
      el("button", { type: "button", class: "danger", text: "Delete",
                     on: { click: () => deleteJob(job.job_id) } }))));
  if (state.detailJob === job.job_id) row.classList.add("selected");
  return row;
}

async function openJob(jobId) {
  if (state.running && state.running.jobId !== jobId) state.running.controller.abort();
  state.detailJob = jobId;
  for (const row of $("jobs-body").rows) row.classList.toggle("selected", row.dataset.jobId === jobId);
  $("job-detail").hidden = false;
  clear($("events"));
  resetOutput();
  try {
    const { data } = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}`, { token: key() });
    if (data.status === "queued" || data.status === "processing") {
      await watch(jobId);
      loadJobs();
    } else {
      renderResult(data);
    }
  } catch (error) {
    showError($("run-status"), error);
  }
  $("output-title").scrollIntoView({ block: "nearest" });
}

/** Show every stored event of the opened job, in order, and replay its text into Output. */
async function replayEvents() {
  const jobId = state.detailJob;
  if (!jobId) return;
  const list = $("events");
  const output = $("output");
  clear(list);
  clear(output);
  const button = $("replay-events");
  button.disabled = true;
  try {
    const result = await streamEvents(`/api/v1/jobs/${encodeURIComponent(jobId)}/sse`, {
      token: key(),
      onEvent: ({ id, event, data }) => {
        const shown = event === "result" ? `status ${data.status}` : JSON.stringify(data);
        list.append(el("li", { text: `#${id} ${event}: ${shown}` }));
        if (event === "status" && data.restarted) clear(output);
        if (event === "chunk" && typeof data.text === "string") {
          output.append(document.createTextNode(data.text));
        }
      },
    });
    renderResult(result);
  } catch (error) {
    showError($("run-status"), error);
  } finally {
    button.disabled = false;
  }
}

async function deleteJob(jobId) {
  if (!window.confirm(`Delete job ${jobId} and its events?`)) return;
  try {
    await api(`/api/v1/jobs/${encodeURIComponent(jobId)}`, { token: key(), method: "DELETE" });
    showNote($("jobs-status"), `Deleted ${jobId}.`, "ok");
    if (state.detailJob === jobId) {
      state.detailJob = null;
      $("job-detail").hidden = true;
    }
  } catch (error) {
    showError($("jobs-status"), error);
    return;
  }
  await loadJobs();
}

// ---- "Copy as" snippets ----------------------------------------------------------------------

function shellQuote(text) {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

function pyLiteral(value, indent = "") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  const inner = `${indent}    `;
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => inner + pyLiteral(v, inner)).join(",\n")},\n${indent}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pyLiteral(v, inner)}`)
    .join(",\n")},\n${indent}}`;
}

const SNIPPETS = {
  curl: (origin, body) => ({
    hint: "POST /api/v1/run waits for the answer; the key comes from $CCGATE_API_KEY.",
    code: `curl -sS ${origin}/api/v1/run \\\n  -H "Authorization: Bearer $CCGATE_API_KEY" \\\n` +
          `  -H "Content-Type: application/json" \\\n  -d ${shellQuote(JSON.stringify(body))}`,
  }),
  httpx: (origin, body) => ({
    hint: "POST /api/v1/run with httpx; the key comes from CCGATE_API_KEY.",
    code: `import os\n\nimport httpx\n\nresponse = httpx.post(\n    ${JSON.stringify(`${origin}/api/v1/run`)},\n` +
          `    headers={"Authorization": f"Bearer {os.environ['CCGATE_API_KEY']}"},\n` +
          `    json=${pyLiteral(body, "    ")},\n    timeout=${(body.timeout_secs || 600) + 30},\n)\n` +
          `response.raise_for_status()\njob = response.json()\nprint(job["result"])`,
  }),
  anthropic: (origin, body) => {
    const args = [`    model=${JSON.stringify(body.model || DEFAULT_SDK_MODEL)},`, "    max_tokens=1024,"];
    if (body.system_prompt) args.push(`    system=${JSON.stringify(body.system_prompt)},`);
    args.push(`    messages=[{"role": "user", "content": ${JSON.stringify(body.prompt)}}],`);
    return {
      hint: "The official anthropic SDK on ccgate's /v1/messages door (no sessions or JSON format there).",
      code: `import os\n\nimport anthropic\n\nclient = anthropic.Anthropic(\n    base_url=${JSON.stringify(origin)},\n` +
            `    api_key=os.environ["CCGATE_API_KEY"],\n)\nmessage = client.messages.create(\n${args.join("\n")}\n)\n` +
            `print(message.content[0].text)`,
    };
  },
  openai: (origin, body) => {
    const messages = [];
    if (body.system_prompt) messages.push(`        {"role": "system", "content": ${JSON.stringify(body.system_prompt)}},`);
    messages.push(`        {"role": "user", "content": ${JSON.stringify(body.prompt)}},`);
    const args = [`    model=${JSON.stringify(body.model || DEFAULT_SDK_MODEL)},`,
                  `    messages=[\n${messages.join("\n")}\n    ],`];
    if (body.response_format === "json") args.push('    response_format={"type": "json_object"},');
    return {
      hint: "The official openai SDK on ccgate's /v1/chat/completions door.",
      code: `import os\n\nfrom openai import OpenAI\n\nclient = OpenAI(\n    base_url=${JSON.stringify(`${origin}/v1`)},\n` +
            `    api_key=os.environ["CCGATE_API_KEY"],\n)\ncompletion = client.chat.completions.create(\n${args.join("\n")}\n)\n` +
            `print(completion.choices[0].message.content)`,
    };
  },
  fetch: (origin, body) => ({
    hint: "POST /api/v1/run with fetch (Node 18+ or Deno); the key comes from CCGATE_API_KEY.",
    code: `const response = await fetch(${JSON.stringify(`${origin}/api/v1/run`)}, {\n  method: "POST",\n` +
          `  headers: {\n    Authorization: \`Bearer \${process.env.CCGATE_API_KEY}\`,\n` +
          `    "Content-Type": "application/json",\n  },\n  body: JSON.stringify(${JSON.stringify(body, null, 2).replaceAll("\n", "\n  ")}),\n});\n` +
          `if (!response.ok) throw new Error(await response.text());\nconst job: { result: unknown } = await response.json();\nconsole.log(job.result);`,
  }),
};

function renderSnippet() {
  const body = requestBody();
  if (!body.prompt) body.prompt = "Hello";
  const { hint, code } = SNIPPETS[state.snippet](window.location.origin, body);
  setText($("snippet-hint"), hint);
  setText($("snippet"), code);
}

function chooseSnippet(event) {
  const button = event.target.closest("button[data-snippet]");
  if (!button) return;
  state.snippet = button.dataset.snippet;
  for (const other of $("snippet-tabs").querySelectorAll("button")) {
    other.setAttribute("aria-pressed", String(other === button));
  }
  renderSnippet();
}

async function copySnippet() {
  const copied = await copyText($("snippet").textContent);
  setText($("copy-status"), copied ? "Copied." : "Copy failed: select the text and copy it.");
}

// ---- wiring ----------------------------------------------------------------------------------

function init() {
  $("api-key").value = apiKeyStore.get();
  $("api-key").addEventListener("change", keyChanged);
  $("api-key").addEventListener("input", () => {
    clearTimeout(keyTimer);
    keyTimer = setTimeout(keyChanged, 400);
  });
  $("forget-key").addEventListener("click", forgetKey);
  $("run-form").addEventListener("submit", run);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) run(event);
  });
  $("cancel").addEventListener("click", cancel);
  $("refresh-limits").addEventListener("click", loadUsage);
  $("refresh-jobs").addEventListener("click", loadJobs);
  $("status-filter").addEventListener("change", () => { state.jobsOffset = 0; loadJobs(); });
  $("newer-jobs").addEventListener("click", () => {
    state.jobsOffset = Math.max(0, state.jobsOffset - JOBS_PER_PAGE);
    loadJobs();
  });
  $("older-jobs").addEventListener("click", () => { state.jobsOffset += JOBS_PER_PAGE; loadJobs(); });
  $("replay-events").addEventListener("click", replayEvents);
  $("snippet-tabs").addEventListener("click", chooseSnippet);
  $("copy-snippet").addEventListener("click", copySnippet);
  $("continue-session").addEventListener("change", renderSnippet);
  for (const id of ["prompt", "system-prompt", "model", "timeout"]) {
    $(id).addEventListener("input", renderSnippet);
  }
  for (const radio of document.querySelectorAll('input[name="format"]')) {
    radio.addEventListener("change", renderSnippet);
  }
  labelCells($("jobs"));
  appliedKey = key();
  refreshAll();
}

init();
