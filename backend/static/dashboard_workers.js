// The Workers panel of /dashboard, for admins: per worker its name, the queues it listens on,
// its state, the job it runs now (a button that opens it in the job view), its last heartbeat
// and the jobs it has done (GET /monitoring/queue/workers). Read each time the Queues panel is
// read (so only with a key that may read the queues). Names and queues come from the workers'
// command lines, job ids from the API: all go in as text, never as HTML.
"use strict";

import { api } from "./dashboard_api.js";
import { el, timeTitle } from "./dashboard_parts.js";
import { agoText } from "./dashboard_queues.js";

// A fleet may be large: past this many workers the panel says how many more there are.
const MAX_WORKERS = 100;

function td(label, text, className) {
  const node = el("td", text, className);
  node.dataset.label = label; // the narrow layout shows it before the value (CSS attr())
  return node;
}

// RQ's counts when the API sends no jobs_done (before the field existed).
function jobsDone(worker) {
  if (worker.jobs_done != null) return worker.jobs_done;
  if (worker.successful_jobs == null && worker.failed_jobs == null) return null;
  return (worker.successful_jobs || 0) + (worker.failed_jobs || 0);
}

export class WorkersPanel {
  // root holds .workers-note and table.workers; openJob(jobId) shows a job in the job view.
  constructor(root, { openJob }) {
    this.root = root;
    this.openJob = openJob;
    this.note = root.querySelector(".workers-note");
    this.table = root.querySelector("table.workers");
    this.body = this.table.querySelector("tbody");
    this.absent = false; // an API without the route (404): not asked again
  }

  hide() { this.root.hidden = true; }

  async refresh() {
    if (this.absent) return;
    let data;
    try {
      data = await api("/monitoring/queue/workers");
    } catch (error) {
      if ([401, 403, 404].includes(error.status)) {
        this.absent = error.status === 404;
        this.hide();
        return;
      }
      this.root.hidden = false;
      this.say(`Workers: ${error.message}`, "error"); // Redis away: 503, said; the rows stay
      return;
    }
    this.root.hidden = false;
    this.show(data.workers || []);
  }

  say(text, kind) {
    this.note.textContent = text;
    this.note.className = kind ? `workers-note ${kind}` : "workers-note";
  }

  show(workers) {
    this.body.replaceChildren(...workers.slice(0, MAX_WORKERS).map((w) => this.row(w)));
    this.table.hidden = !workers.length;
    const more = workers.length - Math.min(workers.length, MAX_WORKERS);
    this.say(!workers.length ? "No worker is registered: jobs wait until one starts." : more ? `and ${more} more workers` : "", "note");
  }

  row(worker) {
    const tr = el("tr");
    tr.dataset.worker = worker.name;
    if (worker.alive === false) tr.classList.add("worker-lost");
    const name = td("Worker", null, "worker-name");
    name.append(el("strong", worker.name));
    const queues = td("Queues", (worker.queues || []).join(", "), "worker-queues");
    const state = td("State", null, "worker-state");
    state.append(el("span", worker.state || "unknown", `state-${worker.state || "unknown"}`));
    // No lease: the worker stopped without saying so (killed, its host gone); RQ still lists it.
    if (worker.alive === false) state.append(" ", el("span", "no heartbeat lease", "worker-gone"));
    const job = td("Current job", null, "worker-job");
    if (worker.current_job) {
      const open = el("button", worker.current_job, "link current-job");
      open.type = "button";
      open.dataset.currentJob = worker.current_job;
      open.setAttribute("aria-label", `open job ${worker.current_job}`);
      open.addEventListener("click", () => this.openJob(worker.current_job));
      job.append(open);
    } else {
      job.append(el("span", "none", "note"));
    }
    const beat = td("Last heartbeat", null, "worker-heartbeat");
    if (worker.last_heartbeat) {
      const time = el("time", agoText(worker.last_heartbeat), "ago");
      time.dateTime = worker.last_heartbeat;
      time.title = timeTitle(worker.last_heartbeat);
      beat.append(time);
    }
    const done = jobsDone(worker);
    tr.append(name, queues, state, job, beat, td("Jobs done", done == null ? "" : String(done), "worker-done"));
    return tr;
  }
}
