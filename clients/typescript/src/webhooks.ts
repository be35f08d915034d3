/**
 * Check a webhook from ccgate: Standard Webhooks signatures, and the older X-Ccgate ones.
 *
 * Standard Webhooks: `webhook-id`, `webhook-timestamp` (unix seconds) and `webhook-signature`,
 * a space-separated list of `v1,<base64 HMAC-SHA256>` over `"<id>.<timestamp>.<body>"` under
 * the secret's bytes (`whsec_<base64>`); any one matching signature passes, so a receiver
 * keeps working while the secret is rotated. The older form: `X-Ccgate-Signature:
 * sha256=<hex HMAC-SHA256>` over `"<X-Ccgate-Timestamp>.<body>"` under the secret's text.
 */

import type { webcrypto } from "node:crypto";

import { WebhookVerificationError } from "./errors.js";

type SubtleCrypto = webcrypto.SubtleCrypto;

export const DEFAULT_TOLERANCE_SECS = 300;
const SECRET_PREFIX = "whsec_";
const encoder = new TextEncoder();

type HeaderSource = Headers | Record<string, string | string[] | undefined>;

export interface VerifyOptions {
  /** Refuse timestamps further than this from now (default 300 s). */
  toleranceSecs?: number;
  /** The current time in unix seconds (for tests). */
  now?: number;
}

async function subtle(): Promise<SubtleCrypto> {
  const scope = globalThis as { crypto?: { subtle?: SubtleCrypto } };
  if (scope.crypto?.subtle) {
    return scope.crypto.subtle;
  }
  // Node 18 has WebCrypto only under node:crypto.
  const nodeCrypto = await import("node:crypto");
  return nodeCrypto.webcrypto.subtle;
}

function base64Decode(text: string): Uint8Array | null {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length === 0) {
    return null;
  }
  const padded = text + "=".repeat((4 - (text.length % 4)) % 4);
  try {
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

function secretKeys(secret: string): Uint8Array[] {
  const keys: Uint8Array[] = [];
  const decoded = base64Decode(secret.startsWith(SECRET_PREFIX)
    ? secret.slice(SECRET_PREFIX.length) : secret);
  if (decoded !== null && decoded.length > 0) {
    keys.push(decoded);
  }
  keys.push(encoder.encode(secret));
  return keys;
}

async function hmac(key: Uint8Array, message: Uint8Array): Promise<Uint8Array> {
  const crypto = await subtle();
  const imported = await crypto.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false,
                                          ["sign"]);
  return new Uint8Array(await crypto.sign("HMAC", imported, message));
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) {
    return false;
  }
  let diff = 0;
  for (let i = 0; i < a.length; i += 1) {
    diff |= (a[i] ?? 0) ^ (b[i] ?? 0);
  }
  return diff === 0;
}

function concat(head: string, body: Uint8Array): Uint8Array {
  const prefix = encoder.encode(head);
  const joined = new Uint8Array(prefix.length + body.length);
  joined.set(prefix);
  joined.set(body, prefix.length);
  return joined;
}

function lowered(headers: HeaderSource): Map<string, string> {
  const found = new Map<string, string>();
  if (headers instanceof Headers) {
    headers.forEach((value, name) => found.set(name.toLowerCase(), value));
  } else {
    for (const [name, value] of Object.entries(headers)) {
      if (value !== undefined) {
        found.set(name.toLowerCase(), Array.isArray(value) ? value.join(" ") : value);
      }
    }
  }
  return found;
}

function checkTimestamp(raw: string, tolerance: number, now: number): void {
  if (!/^[0-9]{1,12}$/.test(raw)) {
    throw new WebhookVerificationError("the webhook timestamp is not a number of seconds");
  }
  if (Math.abs(now - Number(raw)) > tolerance) {
    throw new WebhookVerificationError("the webhook timestamp is too old or too far ahead");
  }
}

async function standard(body: Uint8Array, headers: Map<string, string>, keys: Uint8Array[],
                        tolerance: number, now: number): Promise<void> {
  const id = headers.get("webhook-id") ?? "";
  const timestamp = headers.get("webhook-timestamp") ?? "";
  if (!id || !timestamp) {
    throw new WebhookVerificationError("webhook-id or webhook-timestamp is missing");
  }
  checkTimestamp(timestamp, tolerance, now);
  const message = concat(`${id}.${timestamp}.`, body);
  const expected = await Promise.all(keys.map((key) => hmac(key, message)));
  for (const item of (headers.get("webhook-signature") ?? "").split(" ")) {
    const comma = item.indexOf(",");
    if (comma === -1 || item.slice(0, comma) !== "v1") {
      continue;
    }
    const given = base64Decode(item.slice(comma + 1));
    if (given !== null && expected.some((digest) => equal(given, digest))) {
      return;
    }
  }
  throw new WebhookVerificationError("no webhook signature matches the secret");
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function legacy(body: Uint8Array, headers: Map<string, string>, keys: Uint8Array[],
                      tolerance: number, now: number): Promise<void> {
  const timestamp = headers.get("x-ccgate-timestamp") ?? "";
  checkTimestamp(timestamp, tolerance, now);
  const given = encoder.encode(headers.get("x-ccgate-signature") ?? "");
  for (const key of keys) {
    const expected = encoder.encode(`sha256=${hex(await hmac(key, concat(`${timestamp}.`, body)))}`);
    if (equal(expected, given)) {
      return;
    }
  }
  throw new WebhookVerificationError("the X-Ccgate-Signature does not match the secret");
}

/**
 * The webhook's JSON body once its signature and timestamp check out. `payload` is the raw
 * body exactly as received (before any JSON parsing), `headers` the request's headers,
 * `secret` the key's webhook secret. Throws WebhookVerificationError otherwise.
 */
export async function verifyWebhook(payload: string | Uint8Array, headers: HeaderSource,
                                    secret: string, options: VerifyOptions = {})
    : Promise<Record<string, unknown>> {
  if (!secret) {
    throw new WebhookVerificationError("no webhook secret given");
  }
  const body = typeof payload === "string" ? encoder.encode(payload) : payload;
  const found = lowered(headers);
  const keys = secretKeys(secret);
  const tolerance = options.toleranceSecs ?? DEFAULT_TOLERANCE_SECS;
  const now = options.now ?? Date.now() / 1000;
  if (found.has("webhook-signature")) {
    await standard(body, found, keys, tolerance, now);
  } else if (found.has("x-ccgate-signature")) {
    await legacy(body, found, keys, tolerance, now);
  } else {
    throw new WebhookVerificationError("the webhook carries no signature");
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(body));
  } catch {
    throw new WebhookVerificationError("the webhook body is not JSON");
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new WebhookVerificationError("the webhook body is not a JSON object");
  }
  return parsed as Record<string, unknown>;
}
