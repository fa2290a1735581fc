// The /dashboard page: the job list, the start form, schedules; the job view is in
// dashboard_job.js, the event stream reader in dashboard_stream.js, the Queues panel (admins)
// in dashboard_queues.js with its Rate limits list in dashboard_limits.js. It reads the JSON API with
// the API key the user enters (when keys are configured). Every value from the API goes into
// the page as text (textContent, DOM nodes), never as HTML: tenants choose task arguments,
// results, output, logs and messages.
//
// Refreshing: the list (and schedules) is read again every LIST_REFRESH_MS, a slow timer; the
// job that is open in the job view is followed live through its event stream, and its row
// follows its events at once. No job is polled every second.
"use strict";

import { $, api, restoreKey, saveKey } from "./dashboard_api.js";
import { cell, el, progressBar, tickCountdowns, waitingNode } from "./dashboard_parts.js";
import { JobView } from "./dashboard_job.js";
import { QueuesPanel } from "./dashboard_queues.js";
import { RateLimitsList } from "./dashboard_limits.js";

const LIST_REFRESH_MS = 5000;

const view = new JobView($("detail"), { onJob: updateRow, onProgress: updateRowProgress });
// A pause or resume changes the waiting reasons of the listed jobs: read the list again.
const queues = new QueuesPanel($("queues-panel"), { onChange: () => refresh(), limits: new RateLimitsList($("rate-limits")) });

function button(label, onClick) {
  const b = el("button", label);
  b.addEventListener("click", async (event) => {
    event.stopPropagation();
    try { await onClick(); } catch (e) { $("problem").textContent = e.message; }
    refresh();
  });
  return b;
}

function progressCell(percent, message) {
  const td = el("td");
  const bar = progressBar(percent);
  td.append(bar, ` ${bar.getAttribute("aria-valuenow")}%`);
  if (message) td.append(" ", el("span", message, "progress-message"));
  return td;
}

function row(job) {
  const tr = el("tr");
  tr.dataset.jobId = job.job_id;
  if (job.job_id === view.jobId) tr.classList.add("selected");
  tr.appendChild(cell(job.job_id));
  tr.appendChild(cell(job.task));
  const status = cell(job.status);
  status.className = job.status;
  status.appendChild(waitingNode(job));
  tr.appendChild(status);
  tr.appendChild(progressCell(job.progress, job.progress_message));
  tr.appendChild(cell(job.attempt));
  tr.appendChild(cell(job.created_at));
  const actions = el("td");
  if (["PENDING", "QUEUED", "PROCESSING"].includes(job.status)) actions.appendChild(button("Cancel", () => api(`/jobs/${encodeURIComponent(job.job_id)}/cancel`, { method: "POST" })));
  if (["FAILED", "CANCELLED"].includes(job.status)) actions.appendChild(button("Retry", async () => {
    await api(`/jobs/${encodeURIComponent(job.job_id)}/retry`, { method: "POST" });
    if (view.jobId === job.job_id) view.show(job.job_id); // its view's stream ended: follow the new attempt
  }));
  tr.appendChild(actions);
  tr.addEventListener("click", () => select(job.job_id));
  return tr;
}

const rowOf = (jobId) => document.querySelector(`#jobs tr[data-job-id="${CSS.escape(jobId)}"]`);

// A newer JSON of a listed job (from the job view's events): its row shows it at once.
function updateRow(job) {
  const old = rowOf(job.job_id);
  if (old) old.replaceWith(row(job));
}

function updateRowProgress(jobId, percent, message) {
  const tr = rowOf(jobId);
  if (tr) tr.children[3].replaceWith(progressCell(percent, message));
}

function select(jobId) {
  for (const tr of document.querySelectorAll("#jobs tr.selected")) tr.classList.remove("selected");
  const tr = rowOf(jobId);
  if (tr) tr.classList.add("selected");
  view.show(jobId);
}

// The task names come from GET /tasks, with the key: the page itself names none.
async function loadTasks() {
  try {
    const data = await api("/tasks");
    const names = data.tasks.map((t) => t.name);
    for (const [id, first] of [["task", "any"], ["start-task", null]]) {
      const select = $(id);
      const chosen = select.value;
      const options = names.map((name) => el("option", name));
      if (first) { const o = el("option", first); o.value = ""; options.unshift(o); }
      select.replaceChildren(...options);
      if (chosen && names.includes(chosen)) select.value = chosen;
    }
  } catch (e) { $("problem").textContent = e.message; }
}

let refreshing = false;

async function refresh() {
  if (refreshing) return; // a slow API: never stack reads
  refreshing = true;
  try {
    const query = new URLSearchParams({ limit: "50" });
    if ($("status").value) query.set("status", $("status").value);
    if ($("task").value) query.set("task", $("task").value);
    const data = await api("/jobs?" + query);
    $("jobs").replaceChildren(...data.jobs.map(row));
    data.jobs.forEach((job) => view.updateFromList(job));
    const schedules = await api("/scheduled-jobs");
    $("schedules").replaceChildren(...schedules.scheduled_jobs.map((s) => {
      const tr = el("tr");
      [s.name, s.task, s.cron + " " + s.timezone, s.enabled ? "yes" : "no", s.next_run_at, s.last_job_id].forEach((v) => tr.appendChild(cell(v)));
      return tr;
    }));
    $("problem").textContent = "";
  } catch (e) {
    $("problem").textContent = e.message;
  } finally {
    refreshing = false;
  }
}

$("start").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const job = await api(`/tasks/${encodeURIComponent($("start-task").value)}`, { method: "POST", body: JSON.stringify({ kwargs: JSON.parse($("start-kwargs").value || "{}") }) });
    $("start-result").textContent = "started " + job.job_id;
    await refresh();
    select(job.job_id); // a job started here is followed live at once
  } catch (e) { $("start-result").textContent = e.message; refresh(); }
});
$("key").addEventListener("change", () => {
  saveKey();
  loadTasks();
  refresh();
  queues.keyChanged();
  if (view.jobId) view.show(view.jobId); // its stream reconnects with the new key
});
["status", "task"].forEach((id) => $(id).addEventListener("change", refresh));
restoreKey();
loadTasks();
refresh();
queues.start();
setInterval(refresh, LIST_REFRESH_MS);
setInterval(tickCountdowns, 1000); // page-local: counts "resumes in 40 s" down, no request
