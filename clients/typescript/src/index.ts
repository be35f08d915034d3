/**
 * The TypeScript client of ccgate's native API, for Node 18+ and other server runtimes.
 * No runtime dependencies: fetch and its own SSE reader. Never ship an API key to a browser.
 */

export { CcgateClient, DEFAULT_URL } from "./client.js";
export type { ClientOptions, UploadOptions, WaitOptions } from "./client.js";
export {
  ApiError,
  CcgateError,
  ConfigurationError,
  ConnectionFailedError,
  RateLimitError,
  WaitTimeoutError,
  WebhookVerificationError,
} from "./errors.js";
export type { ApiErrorFacts } from "./errors.js";
export { SSEDecoder } from "./sse.js";
export { TERMINAL_STATUSES, chunkText } from "./types.js";
export type {
  FileInfo,
  Job,
  JobError,
  JobEvent,
  JobOptions,
  JobPage,
  JobStatus,
  RunOptions,
  Session,
  Usage,
  WebhookState,
} from "./types.js";
export { DEFAULT_TOLERANCE_SECS, verifyWebhook } from "./webhooks.js";
export type { VerifyOptions } from "./webhooks.js";
