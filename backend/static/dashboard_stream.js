// Reads a job's Server-Sent Events (GET /jobs/<id>/events) with fetch() and a stream reader.
// EventSource cannot send the Authorization header the page uses, so this does its work: parse
// the id/event/data lines (a blank line ends an event), reconnect with Last-Event-ID after a drop
// (the server replays what was missed, never a duplicate), stop after `end` or on a 204.
"use strict";

// One event's data, or a line still without its end, may not grow past this: the server's
// largest event is a job's JSON (its result within the API's size caps); past it, reconnect.
const MAX_PENDING_CHARS = 8 * 1024 * 1024;
const MAX_RETRY_MS = 30000;

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

// Turns text chunks into events {id, kind, data}: the SSE parsing rules of the HTML standard.
export class EventParser {
  constructor(onEvent, onRetry = () => {}) {
    this.onEvent = onEvent;
    this.onRetry = onRetry;
    this.buffer = "";
    this.reset();
  }

  reset() { this.kind = ""; this.data = []; this.dataChars = 0; this.id = null; }

  // Returns false when the pending text passed the cap (the caller drops the connection).
  push(chunk) {
    this.buffer += chunk;
    for (;;) {
      const end = this.buffer.search(/[\r\n]/);
      if (end < 0) break;
      // A "\r" last in the buffer may be the first half of "\r\n": wait for the next chunk.
      if (this.buffer[end] === "\r" && end === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + (this.buffer.startsWith("\r\n", end) ? 2 : 1));
      this.line(line);
    }
    return this.buffer.length + this.dataChars <= MAX_PENDING_CHARS;
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return; // a comment: the server's keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.kind = value;
    else if (field === "data") { this.data.push(value); this.dataChars += value.length; }
    else if (field === "id" && !value.includes("\0")) this.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.onRetry(Number(value));
  }

  dispatch() {
    const event = { id: this.id, kind: this.kind || "message", data: this.data.join("\n"), hasData: this.data.length > 0 };
    this.reset();
    if (event.id !== null || event.hasData) this.onEvent(event);
  }
}

// Opens the stream and keeps it open until `end`, a 204, an answer that will not change
// (401, 403, 404...) or close(). handlers: headers() -> extra request headers (read at each
// connect, so a new API key applies), onEvent({id, kind, data}) with data parsed from JSON,
// onState(state, detail) with state "connecting", "live", "reconnecting", "ended" or "failed".
export function openEventStream(url, handlers) {
  const controller = new AbortController();
  const { signal } = controller;
  let lastId = null;
  let retryMs = 2000;
  let ended = false;

  async function readOnce() {
    const headers = { Accept: "text/event-stream", ...handlers.headers() };
    if (lastId) headers["Last-Event-ID"] = lastId;
    const response = await fetch(url, { headers, signal, cache: "no-store" });
    if (response.status === 204) { ended = true; return "ended"; }
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      const message = (body && body.error && body.error.message) || `${response.status} ${response.statusText}`;
      // Too many streams, Redis away: the server says when to come back.
      if (response.status === 503 || response.status === 429) {
        const after = Number(response.headers.get("Retry-After"));
        return { wait: after > 0 ? Math.min(after * 1000, MAX_RETRY_MS) : retryMs, message };
      }
      ended = true;
      handlers.onState("failed", message);
      return "failed";
    }
    handlers.onState("live");
    const parser = new EventParser((event) => {
      if (event.id !== null) lastId = event.id;
      if (!event.hasData || ended) return;
      let data;
      try { data = JSON.parse(event.data); } catch { return; }
      handlers.onEvent({ id: event.id, kind: event.kind, data });
      if (event.kind === "end") ended = true;
    }, (ms) => { retryMs = Math.min(ms, MAX_RETRY_MS); });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || ended) break;
        if (!parser.push(value)) break;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
    return ended ? "ended" : { wait: retryMs, message: "the stream closed" };
  }

  (async () => {
    handlers.onState("connecting");
    while (!signal.aborted && !ended) {
      let outcome;
      try {
        outcome = await readOnce();
      } catch (error) {
        if (signal.aborted) return;
        outcome = { wait: retryMs, message: error.message };
      }
      if (outcome === "ended") { handlers.onState("ended"); return; }
      if (outcome === "failed" || signal.aborted) return;
      handlers.onState("reconnecting", outcome.message);
      await sleep(outcome.wait, signal);
    }
  })();

  return { close: () => controller.abort() };
}
