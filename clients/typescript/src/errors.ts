/** The errors a ccgate client throws; each API error carries what the gateway said. */

/** Base class of every error the client throws. */
export class CcgateError extends Error {
  override name = "CcgateError";
}

/** No usable base URL or API key was given or found in the environment. */
export class ConfigurationError extends CcgateError {
  override name = "ConfigurationError";
}

/** The gateway could not be reached, or a stream kept dropping past its reconnect limit. */
export class ConnectionFailedError extends CcgateError {
  override name = "ConnectionFailedError";
}

/** `wait` gave up before the job ended; the job itself goes on. */
export class WaitTimeoutError extends CcgateError {
  override name = "WaitTimeoutError";
}

/** A webhook's signature or timestamp did not check out: do not trust its body. */
export class WebhookVerificationError extends CcgateError {
  override name = "WebhookVerificationError";
}

/** The facts of an error answer. */
export interface ApiErrorFacts {
  type: string;
  status: number;
  message: string;
  requestId: string | null;
  param: string | null;
  /** Seconds to wait before trying again (the Retry-After header), when sent. */
  retryAfter: number | null;
  jobId: string | null;
  body: Record<string, unknown> | null;
}

/** The gateway answered with an error: its type, status, message and request id. */
export class ApiError extends CcgateError {
  override name = "ApiError";
  readonly type: string;
  readonly status: number;
  readonly requestId: string | null;
  readonly param: string | null;
  readonly retryAfter: number | null;
  readonly jobId: string | null;
  readonly body: Record<string, unknown> | null;

  constructor(facts: ApiErrorFacts) {
    super(`${facts.type} (${facts.status}): ${facts.message}`);
    this.type = facts.type;
    this.status = facts.status;
    this.requestId = facts.requestId;
    this.param = facts.param;
    this.retryAfter = facts.retryAfter;
    this.jobId = facts.jobId;
    this.body = facts.body;
  }
}

/** A 429: a limit of the key, the server or upstream is spent; see `retryAfter`. */
export class RateLimitError extends ApiError {
  override name = "RateLimitError";
}

function text(value: unknown): string | null {
  return typeof value === "string" ? value : null;
}

/** The error for a failed answer, from its status, headers and body text. */
export function errorFromResponse(status: number, headers: Headers, body: string): ApiError {
  let parsed: unknown = null;
  try {
    parsed = body ? JSON.parse(body) : null;
  } catch {
    parsed = null;
  }
  const object = parsed !== null && typeof parsed === "object" && !Array.isArray(parsed)
    ? (parsed as Record<string, unknown>) : null;
  const raw = object?.["error"];
  const error = raw !== null && typeof raw === "object" ? (raw as Record<string, unknown>) : {};
  const retry = Number(headers.get("retry-after") ?? "NaN");
  const facts: ApiErrorFacts = {
    type: text(error["type"]) ?? "http_error",
    status,
    message: text(error["message"]) ?? `HTTP ${status}`,
    requestId: text(error["request_id"]) ?? headers.get("request-id") ?? headers.get("x-request-id"),
    param: text(error["param"]),
    retryAfter: Number.isFinite(retry) && retry >= 0 ? retry : null,
    jobId: text(error["job_id"]),
    body: object,
  };
  return status === 429 ? new RateLimitError(facts) : new ApiError(facts);
}
