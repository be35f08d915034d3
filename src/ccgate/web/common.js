// ccgate console: the shared module every console page imports (`import {...} from "./common.js"`).
//
// What it offers:
//   - api(path, {token, method, body, headers, signal}): fetch() against this server; resolves to
//     {data, response}, rejects with ConsoleError carrying the documented error shape
//     ({"error": {"type", "message", "param", "request_id"}}) as .type/.message/.param/.requestId,
//     plus .status and .retryAfter. A dropped connection is type "network_error".
//   - streamEvents(path, {token, onEvent, signal}): a Server-Sent Events reader over fetch() (an
//     EventSource cannot send an Authorization header) that reconnects with Last-Event-ID when
//     the connection drops and stops after the `result` event; readSse(response) parses one stream.
//   - el(tag, props, ...children), setText(node, value), clear(node): DOM building that only ever
//     writes text (textContent, text nodes, attributes); no HTML string is ever parsed, so a
//     model's answer or a stored value holding `<script>` shows as characters and runs nothing.
//   - keepRowFocus(body, rowKey, fallback, render): re-render a table body, focus kept in place.
//   - labelCells(table): data-label on every body cell, for the phone's one-card-per-row tables.
//   - formatTime, formatDuration, formatUsd, formatNumber: display helpers.
//   - apiKeyStore, adminTokenStore: the secret for this tab only (sessionStorage), never a URL.
//   - copyText(text): the clipboard, with a fallback for browsers that refuse it.
// Pages must not use innerHTML, inline scripts, inline event handlers or style attributes: the
// Content-Security-Policy blocks them.

/** An error answer from the server, in the documented shape. */
export class ConsoleError extends Error {
  constructor({ status = 0, type = "network_error", message = "", param = null,
                requestId = null, retryAfter = null } = {}) {
    super(message || type);
    this.name = "ConsoleError";
    this.status = status;
    this.type = type;
    this.param = param;
    this.requestId = requestId;
    this.retryAfter = retryAfter;
  }

  /** One line for a person: type, message and the request id to quote. */
  describe() {
    const id = this.requestId ? ` (request ${this.requestId})` : "";
    const wait = this.retryAfter ? ` Try again in ${this.retryAfter} s.` : "";
    return `${this.type}: ${this.message}${id}${wait}`;
  }
}

function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Read an error answer into a ConsoleError, whatever shape the body has. */
export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = body && typeof body === "object" ? body.error : null;
  const fields = error && typeof error === "object" ? error : {};
  return new ConsoleError({
    status: response.status,
    // The OpenAI-shaped errors (/v1/models without anthropic-version) keep ccgate's type in code.
    type: typeof fields.code === "string" ? fields.code
      : typeof fields.type === "string" ? fields.type : `http_${response.status}`,
    message: typeof fields.message === "string" ? fields.message
      : typeof error === "string" ? error : response.statusText,
    param: typeof fields.param === "string" ? fields.param : null,
    requestId: fields.request_id || response.headers.get("request-id"),
    retryAfter: response.headers.get("retry-after"),
  });
}

/** fetch() a JSON route of this server; resolves to {data, response} or rejects with ConsoleError. */
export async function api(path, { token = null, method = "GET", body = undefined,
                                  headers = {}, signal = undefined } = {}) {
  const init = { method, signal, headers: { ...authHeaders(token), ...headers },
                 credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    if (exc && exc.name === "AbortError") throw exc;
    throw new ConsoleError({ message: "the server could not be reached" });
  }
  if (!response.ok) throw await errorFrom(response);
  const data = response.status === 204 ? null : await response.json();
  return { data, response };
}

/**
 * Parse a text/event-stream body; yields {id, event, data} for each event (data JSON-decoded
 * when it parses, else the raw text). Comment lines (heartbeats) are skipped.
 */
export async function* readSse(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { id: null, event: "message", data: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (event.data.length) {
            const raw = event.data.join("\n");
            let data = raw;
            try { data = JSON.parse(raw); } catch { /* text data stays text */ }
            yield { id: event.id, event: event.event, data };
          }
          event = { id: null, event: "message", data: [] };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") event.data.push(value);
        else if (field === "event") event.event = value;
        else if (field === "id") event.id = value;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => {
    clearTimeout(timer);
    reject(new DOMException("aborted", "AbortError"));
  }, { once: true });
});

/**
 * Follow an SSE route until its `result` event. onEvent({id, event, data}) gets every event
 * once: when the connection drops, the reader reconnects with Last-Event-ID (backing off, at
 * most `retries` times in a row) and the server sends only what came after. onReconnect(n) is
 * told about each reconnection. Resolves to the `result` event's data; rejects with
 * ConsoleError for an error answer, or AbortError when `signal` aborts.
 */
export async function streamEvents(path, { token = null, onEvent = () => {},
                                           onReconnect = () => {}, signal = undefined,
                                           retries = 5 } = {}) {
  let lastEventId = null;
  let failures = 0;
  for (;;) {
    const headers = { ...authHeaders(token), Accept: "text/event-stream" };
    if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
    try {
      const response = await fetch(path, { headers, signal, credentials: "omit",
                                           cache: "no-store", referrerPolicy: "no-referrer" });
      if (!response.ok) throw await errorFrom(response);
      for await (const item of readSse(response)) {
        failures = 0;
        if (item.id !== null) lastEventId = item.id;
        onEvent(item);
        if (item.event === "result") return item.data;
      }
    } catch (exc) {
      if (exc instanceof ConsoleError || (exc && exc.name === "AbortError")) throw exc;
      // A network error mid-stream: fall through to reconnect.
    }
    failures += 1;
    if (failures > retries) {
      throw new ConsoleError({ message: "the event stream kept dropping; reload the job" });
    }
    onReconnect(failures);
    await sleep(Math.min(250 * 2 ** (failures - 1), 4000), signal);
  }
}

/**
 * Build an element. props: `text` (textContent), `class`, `on` ({event: handler}), `dataset`,
 * boolean props (hidden, disabled, checked...) and any other attribute (set as text). Children
 * are nodes or strings (added as text nodes). Never parses HTML.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "class") node.className = value;
    else if (name === "on") {
      for (const [type, handler] of Object.entries(value)) node.addEventListener(type, handler);
    } else if (name === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(name, "");
    else if (name.startsWith("on") || name === "style" || name === "innerHTML") {
      throw new Error(`el(): ${name} is not allowed (CSP and text-only rendering)`);
    } else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/**
 * Give every body cell of `table` its column's header as `data-label`, now and whenever its
 * rows change, so that a narrow screen can show each row as a card of label and value pairs
 * (console.css). A cell spanning several columns (an empty-table note) gets no label.
 */
export function labelCells(table) {
  const label = () => {
    const heads = [...table.tHead.rows[0].cells].map((head) => head.textContent.trim());
    for (const row of table.tBodies[0].rows) {
      let column = 0;
      for (const cell of row.cells) {
        if (cell.colSpan === 1 && heads[column]) cell.dataset.label = heads[column];
        column += cell.colSpan;
      }
    }
  };
  label();
  new MutationObserver(label).observe(table.tBodies[0], { childList: true });
}

/**
 * Re-render the rows of `body` with `render()` without losing the keyboard's place: when a
 * button in a row had the focus, the same button of the same row (matched by the row's
 * `data-${rowKey}`) gets it back, or `fallback` when that button is gone (a deleted job, a
 * revoked key).
 */
export function keepRowFocus(body, rowKey, fallback, render) {
  const focused = document.activeElement;
  const place = focused instanceof HTMLButtonElement && body.contains(focused)
    ? { row: focused.closest("tr")?.dataset[rowKey], text: focused.textContent } : null;
  render();
  if (!place) return;
  const row = [...body.rows].find((candidate) => candidate.dataset[rowKey] === place.row);
  const again = row && [...row.querySelectorAll("button")].find((b) => b.textContent === place.text);
  (again || fallback).focus();
}

/** Replace a node's content with `value` as text. */
export function setText(node, value) {
  node.textContent = value === null || value === undefined ? "" : String(value);
}

/** Show `error` (a ConsoleError's documented type and message, else its text) in `node`. */
export function showError(node, error) {
  node.classList.remove("ok");
  node.classList.add("error");
  setText(node, error instanceof ConsoleError ? error.describe() : String(error?.message || error));
}

/** Show a plain note in `node`; `kind` ("ok", "error") styles it. */
export function showNote(node, text, kind = "") {
  node.classList.remove("error", "ok");
  if (kind) node.classList.add(kind);
  setText(node, text);
}

/** Remove every child of `node`. */
export function clear(node) {
  node.replaceChildren();
}

/** A stored timestamp as local date and time ("—" when absent). */
export function formatTime(value) {
  if (!value) return "—";
  const when = new Date(value);
  return Number.isNaN(when.getTime()) ? String(value) : when.toLocaleString();
}

/** Milliseconds as "850 ms" or "2.1 s" ("—" when absent). */
export function formatDuration(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** A cost in USD with enough digits for small amounts ("—" when absent). */
export function formatUsd(value) {
  if (value === null || value === undefined) return "—";
  return `$${Number(value).toFixed(value < 0.01 ? 6 : 4)}`;
}

/** A count with thousands separators ("—" when absent, "unlimited" for null limits is the caller's). */
export function formatNumber(value) {
  if (value === null || value === undefined) return "—";
  return Number(value).toLocaleString();
}

function sessionSecret(name) {
  return {
    get: () => { try { return sessionStorage.getItem(name) || ""; } catch { return ""; } },
    set: (value) => { try { sessionStorage.setItem(name, value); } catch { /* private mode */ } },
    clear: () => { try { sessionStorage.removeItem(name); } catch { /* private mode */ } },
  };
}

/** The API key, kept in sessionStorage for this tab only. */
export const apiKeyStore = sessionSecret("ccgate.api_key");
/** The admin token, kept in sessionStorage for this tab only. */
export const adminTokenStore = sessionSecret("ccgate.admin_token");

/** Put `text` on the clipboard; resolves to true when it got there. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = el("textarea", { readonly: true, class: "offscreen", "aria-hidden": "true" });
    area.value = text;
    document.body.append(area);
    area.select();
    let copied = false;
    try { copied = document.execCommand("copy"); } catch { copied = false; }
    area.remove();
    return copied;
  }
}
