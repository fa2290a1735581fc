// The "Rate limits" list under the Queues panel of /dashboard, read-only, for admins: per key its
// limit (an override set with PUT /rate-limits/<key>, by whom, else the declared one), how many
// jobs it holds and when its next slot frees; and the limits tasks declare. Read from GET
// /rate-limits each time the queues are read. Keys come from task arguments, chosen by tenants:
// each goes in as text, never as HTML, and the list shows at most MAX_KEYS of them.
"use strict";

import { api } from "./dashboard_api.js";
import { el, timeTitle, untilText } from "./dashboard_parts.js";

const MAX_KEYS = 50;

function td(label, text, className) {
  const node = el("td", text, className);
  node.dataset.label = label;
  return node;
}

function slotCell(iso) {
  const node = td("Next slot");
  if (!iso) return node;
  const countdown = el("time", untilText(iso), "countdown"); // counted down by tickCountdowns()
  countdown.dataset.until = iso;
  countdown.dateTime = iso;
  countdown.title = timeTitle(iso);
  node.appendChild(countdown);
  return node;
}

export class RateLimitsList {
  // root holds .rate-limits-note, a tbody and .rate-limits-declared; it stays hidden until read.
  constructor(root) {
    this.root = root;
    this.note = root.querySelector(".rate-limits-note");
    this.body = root.querySelector("tbody");
    this.declared = root.querySelector(".rate-limits-declared");
    this.absent = false; // an API without the route (404): not asked again
  }

  async refresh() {
    if (this.absent) return;
    let data;
    try {
      data = await api("/rate-limits");
    } catch (error) {
      if (error.status === 404 || error.status === 401 || error.status === 403) {
        this.absent = error.status === 404;
        this.root.hidden = true;
        return;
      }
      this.root.hidden = false;
      this.note.textContent = `Rate limits: ${error.message}`;
      this.note.className = "rate-limits-note error";
      return;
    }
    this.root.hidden = false;
    this.show(data);
  }

  show(data) {
    // One row per key that holds jobs (soonest slot first, as the API sends them), then the
    // overrides of keys that hold none.
    const overrides = new Map((data.overrides || []).map((o) => [o.key, o]));
    const rows = [];
    for (const held of data.held || []) rows.push({ key: held.key, limit: held.limit, held: held.held, next: held.next_slot_at, override: overrides.get(held.key) });
    const heldKeys = new Set(rows.map((r) => r.key));
    for (const o of overrides.values()) if (!heldKeys.has(o.key)) rows.push({ key: o.key, limit: o.limit, held: 0, next: null, override: o });
    this.body.replaceChildren(...rows.slice(0, MAX_KEYS).map((r) => {
      const tr = el("tr");
      tr.dataset.key = r.key;
      const limit = td("Limit", r.limit, "rate-limit");
      if (r.override) limit.append(el("span", ` set by ${r.override.set_by}`, "override-by"));
      tr.append(td("Key", r.key, "rate-key"), limit, td("Held", String(r.held), r.held ? "held" : "held none"), slotCell(r.next));
      return tr;
    }));
    const hidden = rows.length - Math.min(rows.length, MAX_KEYS);
    this.note.className = "rate-limits-note";
    this.note.textContent = !rows.length ? "No key holds jobs, and no limit is overridden." : hidden ? `and ${hidden} more keys (GET /rate-limits)` : "";
    this.body.parentElement.hidden = !rows.length;
    const tasks = data.tasks || [];
    this.declared.replaceChildren();
    if (tasks.length) {
      this.declared.append("Declared: ");
      tasks.forEach((t, i) => {
        if (i) this.declared.append("; ");
        this.declared.append(el("span", t.task, "task-name"), ` ${t.rate_limit} per ${t.rate_key ? `value of ${t.rate_key}` : "task"}`);
      });
    }
  }
}
