/** A Server-Sent Events reader over a fetch body (the WHATWG event-stream rules). */

import type { JobEvent } from "./types.js";

/**
 * Turns the lines of one event stream into events; a new decoder per connection. An event
 * is only handed out at the blank line that ends it, so the half of an event cut off by a
 * dropped connection is never seen.
 */
export class SSEDecoder {
  private event = "";
  private data: string[] = [];
  private id: string | null = null;

  /** Take one line (without its line break); the event it completes, if any. */
  feed(line: string): JobEvent | null {
    if (line === "") {
      return this.dispatch();
    }
    if (line.startsWith(":")) {
      return null;
    }
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) {
      value = value.slice(1);
    }
    if (field === "event") {
      this.event = value;
    } else if (field === "data") {
      this.data.push(value);
    } else if (field === "id" && !value.includes("\0")) {
      this.id = value;
    }
    return null;
  }

  private dispatch(): JobEvent | null {
    const event = this.event || "message";
    const data = this.data;
    const rawId = this.id;
    this.event = "";
    this.data = [];
    this.id = null;
    if (data.length === 0) {
      return null;
    }
    const joined = data.join("\n");
    let payload: unknown = joined;
    try {
      payload = JSON.parse(joined);
    } catch {
      payload = joined;
    }
    const id = rawId !== null && /^[0-9]+$/.test(rawId) ? Number(rawId) : null;
    return { id, event, data: payload };
  }
}

/** The lines of a byte stream, split on CRLF, LF or CR, decoded as UTF-8. */
export async function* readLines(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        finished = true;
        break;
      }
      buffer += decoder.decode(value, { stream: true });
      let match: RegExpExecArray | null;
      // A lone CR at the end may be the first half of a CRLF: wait for the next bytes.
      while ((match = /\r\n|\n|\r(?!$)/.exec(buffer)) !== null) {
        yield buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
      }
    }
    buffer += decoder.decode();
    if (buffer.endsWith("\r")) {
      yield buffer.slice(0, -1);
    }
  } finally {
    if (!finished) {
      // The consumer stopped early (or the read failed): close the connection.
      await reader.cancel().catch(() => undefined);
    }
    reader.releaseLock();
  }
}
