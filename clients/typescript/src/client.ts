/** `CcgateClient`: the native API over fetch, with resumable job event streams. */

import {
  ConfigurationError,
  ConnectionFailedError,
  WaitTimeoutError,
  errorFromResponse,
} from "./errors.js";
import { SSEDecoder, readLines } from "./sse.js";
import {
  TERMINAL_STATUSES,
  type FileInfo,
  type Job,
  type JobEvent,
  type JobOptions,
  type JobPage,
  type RunOptions,
  type Session,
} from "./types.js";

export const DEFAULT_URL = "http://127.0.0.1:8787";

export interface ClientOptions {
  /** The gateway's base URL; default: the CCGATE_URL environment variable, else DEFAULT_URL. */
  baseUrl?: string;
  /** An API key (`ccg_…`); default: the CCGATE_KEY environment variable. Server side only. */
  apiKey?: string;
  /** How often in a row `stream` reconnects after a drop (default 5). */
  maxReconnects?: number;
  /** The first wait before a reconnect, doubled each time up to 10 s (default 500 ms). */
  reconnectDelayMs?: number;
  /** A fetch implementation (default: the global one). */
  fetch?: typeof fetch;
}

export interface WaitOptions {
  /** Give up (WaitTimeoutError) after this many milliseconds; the job goes on. */
  timeoutMs?: number;
  /** Poll every this many milliseconds instead of following the event stream. */
  pollIntervalMs?: number;
}

export interface UploadOptions {
  filename?: string;
  mediaType?: string;
  ttlSecs?: number;
}

type Body = Blob | Uint8Array | ArrayBuffer | string;

function environment(name: string): string | undefined {
  // Only where a process exists (Node and other server runtimes): never in a browser.
  const scope = globalThis as { process?: { env?: Record<string, string | undefined> } };
  return scope.process?.env?.[name];
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function segment(id: string): string {
  return encodeURIComponent(id);
}

/** A ccgate client. Keep keys on servers: never ship one to a browser. */
export class CcgateClient {
  readonly baseUrl: string;
  readonly maxReconnects: number;
  private readonly apiKey: string;
  private readonly reconnectDelayMs: number;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ClientOptions = {}) {
    const url = options.baseUrl || environment("CCGATE_URL") || DEFAULT_URL;
    const key = options.apiKey || environment("CCGATE_KEY");
    if (!key) {
      throw new ConfigurationError("no API key: pass apiKey or set CCGATE_KEY");
    }
    if (!/^https?:\/\//.test(url)) {
      throw new ConfigurationError("base URL must start with http:// or https:// (CCGATE_URL)");
    }
    this.baseUrl = url.replace(/\/+$/, "");
    this.apiKey = key;
    this.maxReconnects = options.maxReconnects ?? 5;
    this.reconnectDelayMs = options.reconnectDelayMs ?? 500;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  private async send(method: string, path: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    headers.set("Authorization", `Bearer ${this.apiKey}`);
    let response: Response;
    try {
      response = await this.fetchImpl(this.baseUrl + path, { ...init, method, headers });
    } catch (error) {
      throw new ConnectionFailedError(`${method} ${path}: ${String(error)}`, { cause: error });
    }
    if (!response.ok) {
      throw errorFromResponse(response.status, response.headers, await response.text());
    }
    return response;
  }

  private async json<T>(method: string, path: string, body?: unknown,
                        headers: Record<string, string> = {}): Promise<T> {
    const init: RequestInit = { headers };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { ...headers, "Content-Type": "application/json" };
    }
    const response = await this.send(method, path, init);
    const text = await response.text();
    return (text ? JSON.parse(text) : undefined) as T;
  }

  // -- jobs ----------------------------------------------------------------------------

  /** Run one prompt and wait for the finished job; a failed run throws ApiError. */
  run(prompt: string, options: RunOptions = {}): Promise<Job> {
    return this.json<Job>("POST", "/api/v1/run", { prompt, ...options });
  }

  /** Queue a job and return it at once (status `queued` or `processing`). */
  submit(prompt: string, options: JobOptions = {},
         request: { idempotencyKey?: string } = {}): Promise<Job> {
    const headers: Record<string, string> = request.idempotencyKey
      ? { "Idempotency-Key": request.idempotencyKey } : {};
    return this.json<Job>("POST", "/api/v1/jobs", { prompt, ...options }, headers);
  }

  /** The job as it is now. */
  get(jobId: string): Promise<Job> {
    return this.json<Job>("GET", `/api/v1/jobs/${segment(jobId)}`);
  }

  /** Cancel a queued or running job; ApiError `conflict` once it has ended. */
  cancel(jobId: string): Promise<Job> {
    return this.json<Job>("POST", `/api/v1/jobs/${segment(jobId)}/cancel`);
  }

  /** Delete a job with its events (cancelling it first if it still runs). */
  async delete(jobId: string): Promise<void> {
    await this.json<undefined>("DELETE", `/api/v1/jobs/${segment(jobId)}`);
  }

  /** One page of the key's jobs, newest first (`limit` 1-100). */
  list(options: { limit?: number; offset?: number; status?: string } = {}): Promise<JobPage> {
    const query = new URLSearchParams({
      limit: String(options.limit ?? 20),
      offset: String(options.offset ?? 0),
    });
    if (options.status !== undefined) {
      query.set("status", options.status);
    }
    return this.json<JobPage>("GET", `/api/v1/jobs?${query.toString()}`);
  }

  /** Every job of the key, newest first, fetched page by page. */
  async *iterJobs(options: { status?: string; pageSize?: number } = {}): AsyncGenerator<Job> {
    let offset = 0;
    for (;;) {
      const page = await this.list({ limit: options.pageSize ?? 100, offset,
                                     ...(options.status ? { status: options.status } : {}) });
      yield* page.jobs;
      offset += page.jobs.length;
      if (page.jobs.length === 0 || offset >= page.total) {
        return;
      }
    }
  }

  /**
   * Wait until the job ends and return it, whatever its end (failed jobs too): by its event
   * stream, or by polling every `pollIntervalMs` when given.
   */
  async wait(jobId: string, options: WaitOptions = {}): Promise<Job> {
    const deadline = options.timeoutMs === undefined ? null : Date.now() + options.timeoutMs;
    if (options.pollIntervalMs !== undefined) {
      for (;;) {
        const job = await this.get(jobId);
        if (TERMINAL_STATUSES.has(job.status)) {
          return job;
        }
        if (deadline !== null && Date.now() + options.pollIntervalMs > deadline) {
          throw new WaitTimeoutError(`job ${jobId} still ${job.status} after ${options.timeoutMs} ms`);
        }
        await sleep(options.pollIntervalMs);
      }
    }
    const controller = new AbortController();
    const timer = deadline === null ? null
      : setTimeout(() => controller.abort(), Math.max(0, deadline - Date.now()));
    try {
      for await (const event of this.stream(jobId, { signal: controller.signal })) {
        if (event.event === "result") {
          return event.data as Job;
        }
      }
    } catch (error) {
      if (controller.signal.aborted) {
        throw new WaitTimeoutError(`job ${jobId} did not end in ${options.timeoutMs} ms`);
      }
      throw error;
    } finally {
      if (timer !== null) {
        clearTimeout(timer);
      }
    }
    return this.get(jobId);
  }

  /**
   * The job's events until its `result`. A dropped connection is resumed from the last event
   * received (`Last-Event-ID`), so no event is lost or repeated.
   */
  async *stream(jobId: string, options: { lastEventId?: number; signal?: AbortSignal } = {})
      : AsyncGenerator<JobEvent> {
    const path = `/api/v1/jobs/${segment(jobId)}/sse`;
    let last = options.lastEventId ?? null;
    let failures = 0;
    for (;;) {
      const headers: Record<string, string> = { Accept: "text/event-stream" };
      if (last !== null) {
        headers["Last-Event-ID"] = String(last);
      }
      let ended = false;
      try {
        const response = await this.send("GET", path, { headers, signal: options.signal ?? null });
        if (response.body === null) {
          throw new ConnectionFailedError(`the event stream of job ${jobId} has no body`);
        }
        const decoder = new SSEDecoder();
        for await (const line of readLines(response.body)) {
          const event = decoder.feed(line);
          if (event === null) {
            continue;
          }
          failures = 0;
          last = event.id ?? last;
          yield event;
          if (event.event === "result") {
            return;
          }
        }
        ended = true;
      } catch (error) {
        // API errors, and the caller's abort, end the stream; anything else is a dropped line.
        if (options.signal?.aborted || !(error instanceof TypeError
            || error instanceof ConnectionFailedError)) {
          throw error;
        }
        failures += 1;
        if (failures > this.maxReconnects) {
          throw new ConnectionFailedError(
            `the event stream of job ${jobId} dropped ${failures} times`, { cause: error });
        }
      }
      if (ended) {
        // The stream ended without a result: the server stopped, or nothing is left.
        if (TERMINAL_STATUSES.has((await this.get(jobId)).status)) {
          return;
        }
        failures += 1;
        if (failures > this.maxReconnects) {
          throw new ConnectionFailedError(
            `the event stream of job ${jobId} kept ending without its result`);
        }
      }
      await sleep(Math.min(10_000, this.reconnectDelayMs * 2 ** Math.max(0, failures - 1)));
    }
  }

  // -- files and sessions --------------------------------------------------------------

  /** Upload a file (a Blob, bytes or text); its `ff_…` token and facts. */
  async uploadFile(data: Body, options: UploadOptions = {}): Promise<FileInfo> {
    const blob = data instanceof Blob ? data
      : new Blob([data], options.mediaType ? { type: options.mediaType } : {});
    const form = new FormData();
    form.append("file", blob, options.filename ?? "upload");
    if (options.ttlSecs !== undefined) {
      form.append("ttl_secs", String(options.ttlSecs));
    }
    const response = await this.send("POST", "/api/v1/files", { body: form });
    return (await response.json()) as FileInfo;
  }

  /** An uploaded file's facts. */
  getFile(fileToken: string): Promise<FileInfo> {
    return this.json<FileInfo>("GET", `/api/v1/files/${segment(fileToken)}`);
  }

  /** Delete an uploaded file before it expires. */
  async deleteFile(fileToken: string): Promise<void> {
    await this.json<undefined>("DELETE", `/api/v1/files/${segment(fileToken)}`);
  }

  /** A session with its turns. */
  getSession(sessionId: string): Promise<Session> {
    return this.json<Session>("GET", `/api/v1/sessions/${segment(sessionId)}`);
  }

  /** Forget a session; later jobs naming it get 404. */
  async deleteSession(sessionId: string): Promise<void> {
    await this.json<undefined>("DELETE", `/api/v1/sessions/${segment(sessionId)}`);
  }
}
