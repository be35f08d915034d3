// The client against a real `ccgate serve`, started by tests/client/test_typescript.py, which
// sets CCGATE_URL, CCGATE_KEY and the CCGATE_TEST_* variables read here.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ApiError,
  CcgateClient,
  ConfigurationError,
  RateLimitError,
  chunkText,
  type JobEvent,
} from "../src/index.js";

function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through tests/client/test_typescript.py`);
  }
  return value;
}

const url = required("CCGATE_URL");
const key = required("CCGATE_KEY");
const gate = new CcgateClient({ baseUrl: url, apiKey: key });

test("run returns the finished job", async () => {
  const job = await gate.run("hello from typescript", { metadata: { trace: "t-1" } });
  assert.equal(job.status, "completed");
  assert.equal(job.result, "hello from typescript");
  assert.deepEqual(job.metadata, { trace: "t-1" });
});

test("submit then wait returns the ended job, by stream and by polling", async () => {
  const first = await gate.submit("first ts job");
  const second = await gate.submit("second ts job");
  assert.ok(first.status === "queued" || first.status === "processing");
  const byStream = await gate.wait(first.job_id, { timeoutMs: 30_000 });
  const byPolling = await gate.wait(second.job_id, { timeoutMs: 30_000, pollIntervalMs: 100 });
  assert.deepEqual([byStream.status, byStream.result], ["completed", "first ts job"]);
  assert.deepEqual([byPolling.status, byPolling.result], ["completed", "second ts job"]);
});

test("stream resumes after a dropped connection without losing or repeating events",
  async () => {
    const proxied = new CcgateClient({ baseUrl: required("CCGATE_TEST_DROP_URL"), apiKey: key,
                                       reconnectDelayMs: 100 });
    const job = await proxied.submit("a typescript stream that gets cut");
    const events: JobEvent[] = [];
    for await (const event of proxied.stream(job.job_id)) {
      events.push(event);
    }
    assert.deepEqual(events.map((e) => e.id), events.map((_, i) => i + 1));
    assert.equal(events.at(-1)?.event, "result");
    assert.equal(events.map(chunkText).join(""), "a typescript stream that gets cut");
  });

test("cancel stops a running job; a second cancel is a conflict", async () => {
  const job = await gate.submit("#fake: hang");
  assert.equal((await gate.cancel(job.job_id)).status, "cancelled");
  await assert.rejects(gate.cancel(job.job_id),
    (error: unknown) => error instanceof ApiError && error.type === "conflict"
      && error.status === 409);
});

test("list pages through every job once", async () => {
  const lister = new CcgateClient({ baseUrl: url, apiKey: required("CCGATE_TEST_LIST_KEY") });
  const submitted: string[] = [];
  for (let n = 0; n < 5; n += 1) {
    submitted.push((await lister.submit(`ts job ${n}`)).job_id);
  }
  const page = await lister.list({ limit: 2 });
  assert.deepEqual([page.total, page.limit, page.jobs.length], [5, 2, 2]);
  const walked: string[] = [];
  for await (const job of lister.iterJobs({ pageSize: 2 })) {
    walked.push(job.job_id);
  }
  assert.deepEqual(walked, [...submitted].reverse());
});

test("files upload, show, attach and delete", async () => {
  const info = await gate.uploadFile("# notes\nhello", { filename: "notes.md", ttlSecs: 600 });
  const seen = await gate.getFile(info.file_token);
  assert.deepEqual([seen.filename, seen.media_type, seen.size], ["notes.md", "text/markdown", 13]);
  assert.equal((await gate.run("read the notes", { files: [info.file_token] })).status,
               "completed");
  await gate.deleteFile(info.file_token);
  await assert.rejects(gate.getFile(info.file_token),
    (error: unknown) => error instanceof ApiError && error.type === "not_found");
});

test("sessions show their turns and are forgotten", async () => {
  const job = await gate.run("remember me");
  assert.ok(job.session_id);
  const session = await gate.getSession(job.session_id);
  assert.deepEqual([session.session_id, session.turns], [job.session_id, 1]);
  await gate.deleteSession(job.session_id);
  await assert.rejects(gate.getSession(job.session_id),
    (error: unknown) => error instanceof ApiError && error.status === 404);
});

test("a rate-limit error carries its type, Retry-After and request id", async () => {
  const limited = new CcgateClient({ baseUrl: url, apiKey: required("CCGATE_TEST_RPM1_KEY") });
  await limited.run("one");
  await assert.rejects(limited.run("two"), (error: unknown) => {
    assert.ok(error instanceof RateLimitError);
    assert.deepEqual([error.type, error.status], ["rpm_exceeded", 429]);
    assert.ok(error.retryAfter !== null && error.retryAfter > 0 && error.retryAfter <= 60);
    assert.match(error.requestId ?? "", /^req_/);
    return true;
  });
});

test("an error carries the request id and the field", async () => {
  await assert.rejects(gate.run("   "), (error: unknown) => {
    assert.ok(error instanceof ApiError);
    assert.deepEqual([error.type, error.status, error.param], ["invalid_request", 400, "prompt"]);
    assert.match(error.requestId ?? "", /^req_/);
    return true;
  });
});

test("the environment supplies the URL and key", async () => {
  const fromEnv = new CcgateClient();
  assert.equal(fromEnv.baseUrl, url.replace(/\/+$/, ""));
  assert.equal((await fromEnv.run("from the environment")).result, "from the environment");
});

test("no key anywhere is a configuration error naming CCGATE_KEY", () => {
  const saved = process.env["CCGATE_KEY"];
  delete process.env["CCGATE_KEY"];
  try {
    assert.throws(() => new CcgateClient({ baseUrl: url }),
      (error: unknown) => error instanceof ConfigurationError && /CCGATE_KEY/.test(error.message));
  } finally {
    process.env["CCGATE_KEY"] = saved;
  }
});
