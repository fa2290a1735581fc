// The /dashboard page: reads the JSON API with the API key the user enters (when keys are
// configured) and refreshes every second. Every value from the API goes into the page as text
// (textContent, DOM nodes), never as HTML: tenants choose task arguments, results and messages.
"use strict";

const $ = (id) => document.getElementById(id);
$("key").value = sessionStorage.getItem("jobservice-key") || "";
$("key").addEventListener("change", () => { sessionStorage.setItem("jobservice-key", $("key").value); loadTasks(); refresh(); });
let selected = null;

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  if ($("key").value) headers["Authorization"] = "Bearer " + $("key").value;
  const response = await fetch(path, { ...options, headers });
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error((body && body.error && body.error.message) || response.statusText);
  return body;
}

function cell(text) { const td = document.createElement("td"); td.textContent = text ?? ""; return td; }

function button(label, onClick) {
  const b = document.createElement("button"); b.textContent = label;
  b.addEventListener("click", async (event) => { event.stopPropagation(); try { await onClick(); } catch (e) { $("problem").textContent = e.message; } refresh(); });
  return b;
}

function row(job) {
  const tr = document.createElement("tr");
  tr.dataset.jobId = job.job_id;
  tr.appendChild(cell(job.job_id));
  tr.appendChild(cell(job.task));
  const status = cell(job.status); status.className = job.status; tr.appendChild(status);
  const percent = Math.min(100, Math.max(0, Number(job.progress) || 0));
  const progress = document.createElement("td");
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuenow", String(percent));
  const fill = document.createElement("span");
  fill.style.width = `${percent}%`; // set through the DOM: the CSP refuses style="" in markup
  bar.appendChild(fill);
  progress.append(bar, ` ${percent}%`);
  if (job.progress_message) progress.append(" " + job.progress_message);
  tr.appendChild(progress);
  tr.appendChild(cell(job.attempt));
  tr.appendChild(cell(job.created_at));
  const actions = document.createElement("td");
  if (["PENDING", "QUEUED", "PROCESSING"].includes(job.status)) actions.appendChild(button("Cancel", () => api(`/jobs/${job.job_id}/cancel`, { method: "POST" })));
  if (["FAILED", "CANCELLED"].includes(job.status)) actions.appendChild(button("Retry", () => api(`/jobs/${job.job_id}/retry`, { method: "POST" })));
  tr.appendChild(actions);
  tr.addEventListener("click", () => { selected = job.job_id; showDetail(); });
  return tr;
}

async function showDetail() {
  if (!selected) return;
  const [job, attempts, hooks] = await Promise.all([
    api(`/jobs/${selected}`), api(`/jobs/${selected}/attempts`), api(`/jobs/${selected}/webhooks`),
  ]);
  $("detail").textContent = JSON.stringify({ job, attempts: attempts.attempts, webhooks: hooks.deliveries }, null, 2);
}

// The task names come from GET /tasks, with the key: the page itself names none.
async function loadTasks() {
  try {
    const data = await api("/tasks");
    const names = data.tasks.map((t) => t.name);
    for (const [id, first] of [["task", "any"], ["start-task", null]]) {
      const select = $(id);
      const chosen = select.value;
      const options = names.map((name) => { const o = document.createElement("option"); o.textContent = name; return o; });
      if (first) { const o = document.createElement("option"); o.value = ""; o.textContent = first; options.unshift(o); }
      select.replaceChildren(...options);
      if (chosen && names.includes(chosen)) select.value = chosen;
    }
  } catch (e) { $("problem").textContent = e.message; }
}

async function refresh() {
  try {
    const query = new URLSearchParams({ limit: "50" });
    if ($("status").value) query.set("status", $("status").value);
    if ($("task").value) query.set("task", $("task").value);
    const data = await api("/jobs?" + query);
    $("jobs").replaceChildren(...data.jobs.map(row));
    const schedules = await api("/scheduled-jobs");
    $("schedules").replaceChildren(...schedules.scheduled_jobs.map((s) => {
      const tr = document.createElement("tr");
      [s.name, s.task, s.cron + " " + s.timezone, s.enabled ? "yes" : "no", s.next_run_at, s.last_job_id].forEach((v) => tr.appendChild(cell(v)));
      return tr;
    }));
    await showDetail();
    $("problem").textContent = "";
  } catch (e) { $("problem").textContent = e.message; }
}

$("start").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const job = await api(`/tasks/${$("start-task").value}`, { method: "POST", body: JSON.stringify({ kwargs: JSON.parse($("start-kwargs").value || "{}") }) });
    $("start-result").textContent = "started " + job.job_id;
  } catch (e) { $("start-result").textContent = e.message; }
  refresh();
});
["status", "task"].forEach((id) => $(id).addEventListener("change", refresh));
loadTasks();
refresh();
setInterval(refresh, 1000);
