// The /dashboard page: the job list, the start form, schedules; the job view is in
// dashboard_job.js, the event stream reader in dashboard_stream.js, the Queues panel (admins)
// in dashboard_queues.js with its Rate limits list in dashboard_limits.js, the Activity charts in
// dashboard_charts.js, the Workers panel in dashboard_workers.js and the search filters of the
// list in dashboard_search.js. It reads the JSON API with
// the API key the user enters (when keys are configured). Every value from the API goes into
// the page as text (textContent, DOM nodes), never as HTML: tenants choose task arguments,
// results, output, logs and messages.
//
// Refreshing: the list (and schedules) is read again every LIST_REFRESH_MS, a slow timer; the
// job that is open in the job view is followed live through its event stream, and its row
// follows its events at once. No job is polled every second.
"use strict";

import { $, api, restoreKey, saveKey } from "./dashboard_api.js";
import { LOCAL_ZONE, cell, el, progressBar, tickCountdowns, timeCell, waitingNode } from "./dashboard_parts.js";
import { JobView } from "./dashboard_job.js";
import { QueuesPanel } from "./dashboard_queues.js";
import { RateLimitsList } from "./dashboard_limits.js";
import { ChartsPanel } from "./dashboard_charts.js";
import { WorkersPanel } from "./dashboard_workers.js";
import { SearchForm } from "./dashboard_search.js";

const LIST_REFRESH_MS = 5000;

const view = new JobView($("detail"), { onJob: updateRow, onProgress: updateRowProgress });
// A pause or resume changes the waiting reasons of the listed jobs: read the list again.
// The admin panels are read with the queues (a tenant's key asks none of them).
const queues = new QueuesPanel($("queues-panel"), {
  onChange: () => refresh(),
  extras: [new RateLimitsList($("rate-limits")), new ChartsPanel($("charts-panel")), new WorkersPanel($("workers-panel"), { openJob: (id) => select(id) })],
});
const search = new SearchForm($("search"), { onApply: () => refresh() });

function button(label, onClick) {
  const b = el("button", label);
  b.addEventListener("click", async (event) => {
    event.stopPropagation();
    try { await onClick(); } catch (e) { $("problem").textContent = e.message; }
    refresh();
  });
  return b;
}

// The narrow layout shows each cell as a "label: value" line (CSS attr(data-label)).
function labelled(td, label) {
  td.dataset.label = label;
  return td;
}

function progressCell(percent, message) {
  const td = labelled(el("td"), "Progress");
  const bar = progressBar(percent);
  const line = el("span", null, "progress-line"); // the bar and its percent stay on one line
  line.append(bar, ` ${bar.getAttribute("aria-valuenow")}%`);
  td.append(line);
  if (message) td.append(" ", el("span", message, "progress-message"));
  return td;
}

function row(job) {
  const tr = el("tr");
  tr.dataset.jobId = job.job_id;
  if (job.job_id === view.jobId) tr.classList.add("selected");
  tr.appendChild(cell(job.job_id));
  tr.appendChild(labelled(cell(job.task), "Task"));
  const status = labelled(cell(job.status), "Status");
  status.className = job.status;
  status.appendChild(waitingNode(job));
  tr.appendChild(status);
  tr.appendChild(progressCell(job.progress, job.progress_message));
  tr.appendChild(labelled(cell(job.attempt), "Attempt"));
  tr.appendChild(labelled(timeCell(job.created_at), "Created"));
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
let again = false;

async function refresh() {
  if (refreshing) { again = true; return; } // a slow API: never stack reads, but read once more after
  refreshing = true;
  try {
    let data;
    try {
      data = await api("/jobs?" + search.params({ limit: "50" }));
    } catch (e) {
      if (!search.refused(e)) throw e;
      data = { jobs: [] }; // filters the API refused: no rows rather than rows they do not describe
    }
    $("jobs").replaceChildren(...data.jobs.map(row));
    if (!data.jobs.length) $("jobs").appendChild(emptyRow());
    data.jobs.forEach((job) => view.updateFromList(job));
    const schedules = await api("/scheduled-jobs");
    $("schedules").replaceChildren(...schedules.scheduled_jobs.map((s) => {
      const tr = el("tr");
      [s.name, s.task, s.cron + " " + s.timezone, s.enabled ? "yes" : "no"].forEach((v) => tr.appendChild(cell(v)));
      tr.append(timeCell(s.next_run_at), cell(s.last_job_id));
      return tr;
    }));
    $("problem").textContent = "";
  } catch (e) {
    $("problem").textContent = e.message;
  } finally {
    refreshing = false;
    if (again) { again = false; refresh(); }
  }
}

function emptyRow() {
  const td = el("td", search.active ? "No job matches these filters." : "No jobs yet.", "note");
  td.colSpan = 7;
  const tr = el("tr", null, "empty");
  tr.appendChild(td);
  return tr;
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
// The headers and the time filters name the clock the page shows and reads: the browser's.
for (const node of document.querySelectorAll(".local-zone")) node.textContent = LOCAL_ZONE;
restoreKey();
loadTasks();
refresh();
queues.start();
setInterval(refresh, LIST_REFRESH_MS);
setInterval(tickCountdowns, 1000); // page-local: counts "resumes in 40 s" down, no request
