// The Queues panel of /dashboard, for admins: per queue its depth, whether it is paused (since
// when, by whom), the live workers listening and the jobs completed in the last minute (GET
// /queues), with a Pause or Resume button (POST /queues/<name>/pause|resume). It is read every
// QUEUES_REFRESH_MS and after each click. A key that may not read it gets one read (403: the
// panel hides; 401, no key: it says an admin key is needed) and no more until the key changes:
// no request every few seconds that can only fail. The panels only an admin may read (Rate
// limits, Activity charts, Workers) are read with the queues, after them: a tenant's key never
// asks them.
// Every value (a worker's name, who paused) goes in as text, never as HTML.
"use strict";

import { api } from "./dashboard_api.js";
import { el, timeTitle } from "./dashboard_parts.js";

const QUEUES_REFRESH_MS = 5000;
// Listening workers shown by name; past this many, "and N more" (a fleet may be large).
const MAX_WORKER_NAMES = 8;
const COLUMNS = ["Queue", "Waiting", "State", "Workers listening", "Done in the last minute", ""];

// "2 min ago" for a past ISO time ("just now" within 5 s, and for a clock ahead of ours).
export function agoText(iso) {
  const s = Math.floor((Date.now() - Date.parse(iso)) / 1000);
  if (!(s >= 5)) return "just now";
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60]]) {
    if (s >= size) return `${Math.floor(s / size)} ${unit} ago`;
  }
  return `${s} s ago`;
}

function timeNode(iso) {
  const node = el("time", agoText(iso), "ago");
  node.dateTime = iso;
  node.title = timeTitle(iso);
  return node;
}

function labelled(label) {
  const td = el("td");
  td.dataset.label = label; // the narrow layout shows it before the value (CSS attr())
  return td;
}

export class QueuesPanel {
  // root holds .queues-note and table.queues; onChange() is called after a pause or resume
  // (the job list's waiting reasons changed with it).
  // extras: the admin panels read with the queues (each has root and refresh(), which says its
  // own errors): the Rate limits list (dashboard_limits.js), the charts, the workers.
  constructor(root, { onChange, extras = [] }) {
    this.root = root;
    this.onChange = onChange;
    this.extras = extras;
    this.note = root.querySelector(".queues-note");
    this.table = root.querySelector("table.queues");
    this.body = this.table.querySelector("tbody");
    this.rows = new Map(); // queue name -> its row's parts, kept so a click is never lost to a redraw
    this.denied = false;
    this.reading = false;
    this.again = false;
    this.failure = null; // the last command's error, shown until the next click
  }

  start() {
    this.refresh();
    setInterval(() => { if (!this.denied) this.refresh(); }, QUEUES_REFRESH_MS);
  }

  // The user entered another key: it may be an admin's.
  keyChanged() {
    this.denied = false;
    this.failure = null;
    this.refresh();
  }

  async refresh() {
    if (this.reading) { this.again = true; return; } // a slow API: never stack reads, but read once more after
    this.reading = true;
    try {
      const data = await api("/queues");
      this.denied = false;
      this.root.hidden = false;
      this.table.hidden = false;
      if (this.failure) this.say(this.failure, "error");
      else this.say("", "");
      for (const queue of data.queues) this.show(queue);
      await Promise.all(this.extras.map((extra) => extra.refresh()));
    } catch (error) {
      if (error.status === 401 || error.status === 403) {
        this.denied = true;
        this.table.hidden = true;
        this.rows.clear();
        this.body.replaceChildren();
        // A tenant's key: nothing here is theirs, so the panel goes. No key yet: say what it needs.
        this.root.hidden = error.status === 403;
        for (const extra of this.extras) extra.root.hidden = true;
        this.say("Enter an admin key to see the queues and pause them.", "note");
      } else {
        this.say(`Queues: ${error.message}`, "error");
      }
    } finally {
      this.reading = false;
      // Asked again meanwhile (a new key, a click): read with what holds now.
      if (this.again) { this.again = false; this.refresh(); }
    }
  }

  say(text, kind) {
    this.note.textContent = text;
    this.note.className = kind ? `queues-note ${kind}` : "queues-note";
  }

  row(name) {
    let parts = this.rows.get(name);
    if (parts) return parts;
    const tr = el("tr");
    tr.dataset.queue = name;
    parts = { tr, cells: COLUMNS.map((label) => labelled(label)), button: el("button", null, "queue-command") };
    parts.cells[0].append(el("strong", name));
    parts.cells[5].append(parts.button);
    parts.button.addEventListener("click", () => this.command(name));
    tr.append(...parts.cells);
    this.body.appendChild(tr);
    this.rows.set(name, parts);
    return parts;
  }

  show(queue) {
    const parts = this.row(queue.name);
    parts.queue = queue;
    const [, depth, state, workers, done] = parts.cells;
    depth.textContent = String(queue.depth);
    state.className = queue.paused ? "queue-paused" : "queue-open";
    state.replaceChildren(el("span", queue.paused ? "paused" : "open", "queue-state"));
    if (queue.paused && queue.paused_at) state.append(" ", timeNode(queue.paused_at));
    if (queue.paused && queue.paused_by) state.append(" by ", el("span", queue.paused_by, "paused-by"));
    // What workers obey is Redis's copy: it differs from the record only while Redis lags it.
    if (queue.paused_in_redis !== undefined && queue.paused_in_redis !== queue.paused) {
      state.append(el("div", queue.paused ? "workers do not see the pause yet" : "workers still see it paused", "queue-lag"));
    }
    const names = queue.workers || [];
    workers.replaceChildren(el("span", names.length ? String(names.length) : "none", names.length ? "worker-count" : "worker-count none"));
    if (names.length) {
      const list = el("span", null, "worker-names");
      list.append(": ", ...names.slice(0, MAX_WORKER_NAMES).flatMap((w, i) => (i ? [", ", el("span", w, "worker-name")] : [el("span", w, "worker-name")])));
      if (names.length > MAX_WORKER_NAMES) list.append(` and ${names.length - MAX_WORKER_NAMES} more`);
      workers.append(list);
    }
    done.textContent = String(queue.completed_last_minute);
    if (!parts.busy) this.label(parts);
  }

  label(parts) {
    const verb = parts.queue.paused ? "Resume" : "Pause";
    parts.button.textContent = verb;
    parts.button.setAttribute("aria-label", `${verb} queue ${parts.queue.name}`);
  }

  // Pause an open queue, resume a paused one: as the row showed it when clicked.
  async command(name) {
    const parts = this.rows.get(name);
    if (!parts || parts.busy) return;
    const verb = parts.queue.paused ? "resume" : "pause";
    parts.busy = true;
    parts.button.disabled = true;
    parts.button.textContent = verb === "pause" ? "Pausing…" : "Resuming…";
    this.failure = null;
    try {
      const outcome = await api(`/queues/${encodeURIComponent(name)}/${verb}`, { method: "POST" });
      parts.queue = { ...parts.queue, paused: outcome.paused }; // the button's next verb, before the read below
    } catch (error) {
      // Kept in view until the next click: a 503 says the store has it and to send it again.
      this.failure = `Could not ${verb} queue ${name}: ${error.message}`;
    }
    parts.busy = false;
    parts.button.disabled = false;
    this.label(parts);
    await this.refresh();
    this.onChange(); // even after a 503: the store may have recorded it
  }
}
