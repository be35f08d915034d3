// verifyWebhook against signatures written out here from the Standard Webhooks spec.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { test } from "node:test";

import { WebhookVerificationError, verifyWebhook } from "../src/index.js";

const secretBytes = Buffer.from("0123456789abcdef0123456789abcdef");
const secret = `whsec_${secretBytes.toString("base64")}`;
const body = '{"job_id":"job_1","status":"completed","result":"hi"}';

function specSignature(key: Buffer, id: string, timestamp: number, payload: string): string {
  const mac = createHmac("sha256", key).update(`${id}.${timestamp}.${payload}`).digest("base64");
  return `v1,${mac}`;
}

function specHeaders(signature: string, timestamp: number): Record<string, string> {
  return { "Webhook-Id": "msg_1", "Webhook-Timestamp": String(timestamp),
           "Webhook-Signature": signature };
}

const now = (): number => Math.floor(Date.now() / 1000);

test("a spec signature verifies and the body comes back parsed", async () => {
  const stamp = now();
  const headers = new Headers(specHeaders(specSignature(secretBytes, "msg_1", stamp, body), stamp));
  assert.equal((await verifyWebhook(body, headers, secret))["job_id"], "job_1");
});

test("one matching signature among several is enough", async () => {
  const stamp = now();
  const old = specSignature(Buffer.from("another secret entirely"), "msg_1", stamp, body);
  const current = specSignature(secretBytes, "msg_1", stamp, body);
  const headers = specHeaders(`${old} ${current}`, stamp);
  assert.equal((await verifyWebhook(body, headers, secret))["status"], "completed");
});

test("a changed body or a timestamp more than five minutes off is refused", async () => {
  for (const [payload, age] of [[body.replace("hi", "ho"), 0], [body, 301], [body, -301]] as const) {
    const stamp = now() - age;
    const headers = specHeaders(specSignature(secretBytes, "msg_1", stamp, body), stamp);
    await assert.rejects(verifyWebhook(payload, headers, secret), WebhookVerificationError);
  }
});

test("an unsigned webhook is refused", async () => {
  await assert.rejects(verifyWebhook(body, { "content-type": "application/json" }, secret),
    /no signature/);
});

test("the X-Ccgate-Signature form still verifies", async () => {
  const stamp = String(now());
  const mac = createHmac("sha256", secret).update(`${stamp}.${body}`).digest("hex");
  const headers = { "X-Ccgate-Timestamp": stamp, "X-Ccgate-Signature": `sha256=${mac}` };
  assert.equal((await verifyWebhook(new TextEncoder().encode(body), headers, secret))["result"],
               "hi");
  await assert.rejects(verifyWebhook(body, { ...headers, "X-Ccgate-Signature": "sha256=00" },
                                     secret), WebhookVerificationError);
});
