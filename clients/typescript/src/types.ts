/** The shapes of what the gateway answers (field names as on the wire, see docs/api.md). */

export type JobStatus = "queued" | "processing" | "completed" | "failed" | "cancelled";

export const TERMINAL_STATUSES: ReadonlySet<string> = new Set(["completed", "failed", "cancelled"]);

export interface Usage {
  input_tokens: number;
  output_tokens: number;
  cache_creation_input_tokens: number;
  cache_read_input_tokens: number;
}

export interface JobError {
  type: string;
  message: string;
}

export interface WebhookState {
  event_id: string;
  url: string;
  status: string;
  attempts: number;
  last_status_code: number | null;
  last_error: string | null;
  next_attempt_at: string | null;
  delivered_at: string | null;
}

/** The job object of `/api/v1/run`, `/api/v1/jobs` and the SSE `result` event. */
export interface Job {
  job_id: string;
  status: JobStatus;
  model: string | null;
  result: unknown;
  error: JobError | null;
  usage: Usage | null;
  cost_usd: number | null;
  session_id: string | null;
  duration_ms: number | null;
  attempts: number;
  metadata: Record<string, unknown> | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  result_parse_error?: string | null;
  /** When a queued job waits for a plan window to reopen: when it will start. */
  retry_at?: string | null;
  webhook?: WebhookState | null;
}

export interface JobPage {
  jobs: Job[];
  total: number;
  limit: number;
  offset: number;
}

export interface FileInfo {
  file_token: string;
  filename: string | null;
  media_type: string;
  size: number;
  ttl_secs: number;
  created_at: string;
  expires_at: string;
}

export interface Session {
  session_id: string;
  model: string | null;
  system_prompt: string | null;
  turns: number;
  messages: Array<Record<string, unknown>>;
  created_at: string;
  updated_at: string;
  expires_at: string;
}

/** Optional fields of a run or job, as in docs/api.md. */
export interface RunOptions {
  model?: string;
  system_prompt?: string;
  append_system_prompt?: string;
  response_format?: "text" | "json";
  timeout_secs?: number;
  metadata?: Record<string, unknown>;
  session_id?: string;
  files?: string[];
}

/** Optional fields of an async job: a run's, plus where to send the webhook. */
export interface JobOptions extends RunOptions {
  callback_url?: string;
}

/** One server-sent event of a job: `status`, `chunk` or `result`. */
export interface JobEvent {
  id: number | null;
  event: string;
  data: unknown;
}

/** The text of a `chunk` event ("" for other events). */
export function chunkText(event: JobEvent): string {
  if (event.event !== "chunk" || event.data === null || typeof event.data !== "object") {
    return "";
  }
  const value = (event.data as Record<string, unknown>)["text"];
  return typeof value === "string" ? value : "";
}
