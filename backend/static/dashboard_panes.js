// The two growing panes of the job view: its log lines and its live output. Both are capped
// (a job may log or emit for hours; the page must not grow without bound) and both insert the
// tenant's text as text nodes, never as HTML.
"use strict";

import { el } from "./dashboard_parts.js";

const MAX_LOG_LINES = 2000;
const MAX_OUTPUT_CHARS = 200000;
// The dedupe counts below hold at most this many distinct lines; past it they start afresh
// (a line may then show twice: better than unbounded memory).
const MAX_PENDING_KEYS = 10000;

// Counts of lines seen from one source and not yet from the other.
class Multiset {
  constructor() { this.counts = new Map(); }
  take(key) {
    const n = this.counts.get(key);
    if (!n) return false;
    if (n === 1) this.counts.delete(key); else this.counts.set(key, n - 1);
    return true;
  }
  add(key) {
    if (this.counts.size >= MAX_PENDING_KEYS) this.counts.clear();
    this.counts.set(key, (this.counts.get(key) || 0) + 1);
  }
}

// The job's log: lines read from the store (GET /jobs/<id>/logs, with a seq) and lines from the
// stream's `log` events (no seq; a reconnect or the replayed history repeats what the store
// already gave). Both are the same lines in the same order, each source a prefix of the
// whole, so a line is shown once when it matches one seen from the other source, counted by
// (attempt, level, message).
export class LogPane {
  constructor(node) {
    this.node = node;
    this.fromStore = new Multiset();
    this.fromEvents = new Multiset();
    this.after = null; // the last seq read from the store
  }

  static key(line) { return `${line.attempt}\u0000${line.level}\u0000${line.message}`; }

  addStored(line) {
    if (line.seq != null) this.after = line.seq;
    const key = LogPane.key(line);
    if (this.fromEvents.take(key)) return;
    this.fromStore.add(key);
    this.show(line);
  }

  addEvent(line) {
    const key = LogPane.key(line);
    if (this.fromStore.take(key)) return;
    this.fromEvents.add(key);
    this.show(line);
  }

  notice(text) { this.append(el("div", text, "notice")); }

  show(line) {
    const row = el("div", null, "log-line");
    const at = line.at ? String(line.at).replace("T", " ").replace("Z", "") : "";
    row.append(el("span", at, "log-at"), " ", el("span", line.level, `log-level level-${line.level}`), " ");
    row.append(el("span", `[${line.attempt}]`, "log-attempt"), " ", el("span", line.message, "log-message"));
    this.append(row);
  }

  append(row) {
    const follow = atBottom(this.node);
    this.node.appendChild(row);
    while (this.node.childElementCount > MAX_LOG_LINES) this.node.firstElementChild.remove();
    if (follow) this.node.scrollTop = this.node.scrollHeight;
  }
}

// What the task emitted: a string (an LLM's tokens) runs on as it is; any other JSON value goes
// on a line of its own. Text is gathered and added once per animation frame, so a fast stream
// of tokens costs one DOM change per frame, not one per token.
export class OutputPane {
  constructor(node) {
    this.node = node;
    this.pending = "";
    this.chars = 0;
    this.attempt = null;
    this.frame = null;
  }

  add(output) {
    if (this.attempt !== null && output.attempt !== this.attempt) this.pending += `\n--- attempt ${output.attempt} ---\n`;
    this.attempt = output.attempt;
    const data = output.data;
    this.pending += typeof data === "string" ? data : JSON.stringify(data) + "\n";
    if (this.pending.length > MAX_OUTPUT_CHARS) this.pending = this.pending.slice(-MAX_OUTPUT_CHARS);
    if (this.frame === null) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = null;
    if (!this.pending) return;
    const follow = atBottom(this.node);
    this.node.appendChild(document.createTextNode(this.pending));
    this.chars += this.pending.length;
    this.pending = "";
    // Past the cap, drop whole text nodes from the start, then cut the first one.
    while (this.chars > MAX_OUTPUT_CHARS && this.node.firstChild) {
      const first = this.node.firstChild;
      const excess = this.chars - MAX_OUTPUT_CHARS;
      if (first.data.length <= excess) { this.chars -= first.data.length; first.remove(); }
      else { first.data = first.data.slice(excess); this.chars -= excess; }
    }
    this.node.classList.toggle("empty", this.chars === 0);
    if (follow) this.node.scrollTop = this.node.scrollHeight;
  }
}

function atBottom(node) { return node.scrollHeight - node.scrollTop - node.clientHeight < 24; }
