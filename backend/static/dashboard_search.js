// The search filters above the job list of /dashboard: the parameters of GET /jobs (task,
// status, owner, created_after/before, kwargs.<name>=<value>, q, batch_id, schedule_id). Only the
// filled ones are sent. The selects apply at once; the text fields when the user presses Search
// (or Enter), so a list read every few seconds never runs on a half-typed value. An answer the
// API refuses (422: a bad time, kwarg name or cursor; 403: another owner for a tenant's key) is
// shown under the form, in the API's words, not swallowed.
"use strict";

import { $ } from "./dashboard_api.js";
import { el } from "./dashboard_parts.js";

// GET /jobs takes at most this many kwargs.<name> filters.
const MAX_KWARGS = 5;
const TEXT_FIELDS = [["search-q", "q"], ["search-owner", "owner"], ["search-batch", "batch_id"], ["search-schedule", "schedule_id"]];

// A datetime-local value is the user's local time without a zone: the API gets it in UTC.
function isoFromLocal(value) {
  if (!value) return "";
  const at = new Date(value);
  return Number.isNaN(at.getTime()) ? value : at.toISOString();
}

export class SearchForm {
  // onApply() is called when the filters change (the list is then read again).
  constructor(form, { onApply }) {
    this.form = form;
    this.onApply = onApply;
    this.error = $("search-error");
    this.kwargsBox = $("search-kwargs");
    this.addButton = $("search-add-kwarg");
    this.applied = new URLSearchParams(); // what the list reads with, until the next Search
    this.addButton.addEventListener("click", () => { const row = this.addKwarg(); row.querySelector("input").focus(); });
    form.addEventListener("submit", (event) => { event.preventDefault(); this.apply(); });
    $("search-clear").addEventListener("click", () => this.clear());
    for (const id of ["status", "task"]) $(id).addEventListener("change", () => this.apply());
    this.addKwarg();
  }

  // One "name = value" pair of inputs, with a button that removes it.
  addKwarg() {
    const rows = this.kwargsBox.querySelectorAll(".kwarg");
    if (rows.length >= MAX_KWARGS) return rows[rows.length - 1];
    const row = el("div", null, "kwarg");
    const name = el("input", null, "kwarg-name");
    name.placeholder = "name";
    name.size = 10;
    name.setAttribute("aria-label", "kwarg name");
    const value = el("input", null, "kwarg-value");
    value.placeholder = "value";
    value.size = 10;
    value.setAttribute("aria-label", "kwarg value");
    const remove = el("button", "×", "kwarg-remove");
    remove.type = "button";
    remove.setAttribute("aria-label", "remove this kwarg filter");
    remove.addEventListener("click", () => {
      row.remove();
      if (!this.kwargsBox.querySelector(".kwarg")) this.addKwarg();
      this.sync();
    });
    row.append(name, el("span", "=", "kwarg-eq"), value, remove);
    this.kwargsBox.insertBefore(row, this.addButton);
    this.sync();
    return row;
  }

  sync() { this.addButton.disabled = this.kwargsBox.querySelectorAll(".kwarg").length >= MAX_KWARGS; }

  // The filters as the form holds them now: only the filled fields.
  read() {
    const query = new URLSearchParams();
    if ($("status").value) query.set("status", $("status").value);
    if ($("task").value) query.set("task", $("task").value);
    for (const [id, name] of TEXT_FIELDS) {
      const value = $(id).value.trim();
      if (value) query.set(name, value);
    }
    const after = isoFromLocal($("search-after").value);
    if (after) query.set("created_after", after);
    const before = isoFromLocal($("search-before").value);
    if (before) query.set("created_before", before);
    for (const row of this.kwargsBox.querySelectorAll(".kwarg")) {
      const name = row.querySelector(".kwarg-name").value.trim();
      if (name) query.append(`kwargs.${name}`, row.querySelector(".kwarg-value").value);
    }
    return query;
  }

  apply() {
    this.applied = this.read();
    this.say("");
    this.onApply();
  }

  clear() {
    for (const id of ["status", "task", "search-after", "search-before", ...TEXT_FIELDS.map(([id]) => id)]) $(id).value = "";
    for (const row of this.kwargsBox.querySelectorAll(".kwarg")) row.remove();
    this.addKwarg();
    this.apply();
  }

  // The applied filters plus the list's own parameters (limit).
  params(extra) {
    const query = new URLSearchParams(this.applied);
    for (const [name, value] of Object.entries(extra)) query.set(name, value);
    return query;
  }

  get active() { return [...this.applied.keys()].length > 0; }

  // An error of the list read: the filters' fault (4xx but 401) goes here; true if it did.
  refused(error) {
    if (!(error.status >= 400 && error.status < 500) || [401, 429].includes(error.status)) return false;
    this.say(`Search refused: ${error.message}`);
    return true;
  }

  say(text) { this.error.textContent = text; }
}
