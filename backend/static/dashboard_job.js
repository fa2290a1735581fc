// The job view of /dashboard (click a job): status, progress and its last message, the wait in
// words, attempts, logs and live output. One job is shown at a time, and it alone is followed
// live, through its event stream (GET /jobs/<id>/events): no request per second per job.
"use strict";

import { $, api, authHeaders } from "./dashboard_api.js";
import { LOCAL_ZONE, cell, el, jsonText, localTime, progressBar, setProgress, timeCell, waitingNode } from "./dashboard_parts.js";
import { LogPane, OutputPane } from "./dashboard_panes.js";
import { openEventStream } from "./dashboard_stream.js";

const LIVE = ["PENDING", "QUEUED", "PROCESSING"];
// GET /jobs/<id>/logs pages (1,000 lines each) read when the view opens: the store keeps
// at most MAX_LOG_LINES_PER_JOB lines per attempt, so a few pages cover most jobs.
const LOG_PAGES = 5;
// After `end` the stream is closed, but the worker's last log lines may still be on their way
// to the store: read what came after the last line seen once more, this long after.
const LATE_LOGS_MS = 2000;

// A time field of the job on the browser's clock (a <time> node), or null when unset.
const when = (iso) => (iso ? localTime(iso) : null);

// A field's value: text, or a node (a time) as it is.
function dd(value) {
  const node = el("dd");
  node.append(value);
  return node;
}

export class JobView {
  // Told what the stream brings, so that the list's row of the job follows at once:
  // onJob(job) every newer job JSON, onProgress(jobId, percent, message) every progress event.
  constructor(root, { onJob, onProgress }) {
    this.root = root;
    this.onJob = onJob;
    this.onProgress = onProgress;
    this.jobId = null;
    this.stream = null;
    this.timer = null;
    // Bumped by every show(): an answer or event for an earlier view (another job, or the same
    // job opened again) is dropped, never written into the view now shown.
    this.generation = 0;
  }

  close() {
    if (this.stream) this.stream.close();
    clearTimeout(this.timer);
    this.stream = null;
    this.jobId = null;
  }

  async show(jobId) {
    this.close();
    const generation = ++this.generation;
    this.jobId = jobId;
    this.progressAttempt = null;
    this.job = null;
    this.build();
    const mine = () => this.generation === generation;
    const problem = (error) => { if (mine()) this.parts.problem.textContent = error.message; };
    try {
      const job = await api(`/jobs/${encodeURIComponent(jobId)}`);
      if (!mine()) return;
      this.render(job);
    } catch (error) {
      return problem(error); // unknown job, no key: nothing to follow
    }
    // The stored log lines first: the stream's replayed `log` events are matched against them.
    await Promise.all([this.loadAttempts().catch(problem), this.loadWebhooks().catch(problem), this.loadLogs()]);
    if (!mine()) return;
    this.stream = openEventStream(`/jobs/${encodeURIComponent(jobId)}/events`, {
      headers: authHeaders,
      onEvent: (event) => { if (mine()) this.onEvent(event); },
      onState: (state, detail) => { if (mine()) this.parts.stream.textContent = detail ? `${state}: ${detail}` : state; },
    });
  }

  // Called by the list's refresh: the wait (its reason, its queue position) changes without a
  // status change, so without a status event; the list, read every few seconds, has it. A job
  // run again after its end (a retry by anyone) has a newer attempt, and the view's stream
  // closed at the end: open the view again, which follows the new attempt.
  updateFromList(job) {
    if (!this.job || job.job_id !== this.jobId) return;
    if (!LIVE.includes(this.job.status) && job.attempt > this.job.attempt) {
      this.show(this.jobId);
    } else if (job.status === this.job.status && LIVE.includes(job.status)) {
      this.parts.waiting.replaceWith((this.parts.waiting = waitingNode(job)));
    }
  }

  build() {
    const p = (this.parts = {});
    const section = (title, node) => { const s = el("section", null, "job-section"); s.append(el("h3", title), node); return s; };
    const head = el("div", null, "job-head");
    head.append((p.id = el("strong", this.jobId, "job-id")), " ", (p.task = el("span")), " ", (p.status = el("span", null, "job-status")));
    head.append(" · live updates: ", (p.stream = el("span", "connecting", "job-stream")));
    const progress = el("div", null, "job-progress");
    progress.append((p.bar = progressBar(0)), " ", (p.percent = el("span", "0%")), " ", (p.message = el("span", null, "progress-message")));
    p.waiting = waitingNode(null);
    p.fields = el("dl", null, "job-fields");
    p.attempts = el("tbody");
    const attempts = el("table", null, "attempts");
    const header = el("tr");
    ["Attempt", "Worker", `Started (${LOCAL_ZONE})`, "Ended", "Outcome", "Error"].forEach((t) => header.appendChild(el("th", t)));
    attempts.append(el("thead"), p.attempts);
    attempts.firstChild.appendChild(header);
    p.output = el("pre", null, "job-output empty");
    p.output.id = "job-output";
    p.logs = el("div", null, "job-logs");
    p.logs.id = "job-logs";
    p.webhooks = el("pre", null, "job-webhooks");
    p.problem = el("p", null, "error");
    const scroll = el("div", null, "scroll"); // six columns: on a phone they scroll in place
    scroll.appendChild(attempts);
    this.root.replaceChildren(head, p.problem, progress, p.waiting, p.fields, section("Attempts", scroll),
      section("Output (live)", p.output), section("Logs", p.logs), section("Webhooks", p.webhooks));
    this.logPane = new LogPane(p.logs);
    this.outputPane = new OutputPane(p.output);
  }

  render(job) {
    const p = this.parts;
    this.job = job;
    p.task.textContent = job.task;
    p.status.textContent = job.status;
    p.status.className = "job-status " + job.status;
    // Progress events run ahead of the store's copy in a status event of the same attempt:
    // keep theirs while it runs; an ended job's JSON has the final value and message.
    if (!(job.status === "PROCESSING" && this.progressAttempt === job.attempt)) this.progress(job.progress, job.progress_message);
    p.waiting.replaceWith((p.waiting = waitingNode(job)));
    const fields = [
      ["Attempt", `${job.attempt}`], ["Retries", `${job.retry_count} of ${job.max_retries}`],
      ["Interruptions", `${job.interruptions} of ${job.max_interruptions}`],
      ["Snoozes", job.snoozes == null ? null : `${job.snoozes} of ${job.max_snoozes}`],
      ["Checkpoint saved", when(job.checkpoint_at)], ["Worker", job.worker], ["Created", when(job.created_at)],
      ["Started", when(job.started_at)], ["Completed", when(job.completed_at)], ["Run at", when(job.run_at)],
      ["Waiting for", (job.waiting_for || []).join(", ") || null], ["Error", job.error],
      ["Args", jsonText(job.args)], ["Kwargs", jsonText(job.kwargs)], ["Result", job.result == null ? null : jsonText(job.result)],
    ];
    p.fields.replaceChildren(...fields.filter(([, v]) => v != null && v !== "").flatMap(([k, v]) => [el("dt", k), dd(v)]));
    this.onJob(job);
  }

  progress(percent, message) {
    setProgress(this.parts.bar, percent);
    this.parts.percent.textContent = `${this.parts.bar.getAttribute("aria-valuenow")}%`;
    this.parts.message.textContent = message || "";
  }

  onEvent({ kind, data }) {
    if (kind === "progress") {
      this.progressAttempt = this.job ? this.job.attempt : null;
      this.progress(data.progress, data.message);
      this.onProgress(this.jobId, data.progress, data.message);
    } else if (kind === "output") {
      this.outputPane.add(data);
    } else if (kind === "log") {
      this.logPane.addEvent(data);
    } else if (kind === "status" || kind === "end") {
      const changed = !this.job || this.job.status !== data.status || this.job.attempt !== data.attempt;
      if (this.job && data.attempt !== this.job.attempt) this.progressAttempt = null;
      // A status event leaves out args, kwargs and result (the history stays small): keep the args.
      this.render(kind === "status" && this.job ? { args: this.job.args, kwargs: this.job.kwargs, ...data } : data);
      if (changed || kind === "end") this.loadAttempts().catch((e) => { this.parts.problem.textContent = e.message; });
      if (kind === "end") {
        this.loadWebhooks().catch(() => {});
        this.timer = setTimeout(() => this.loadLogs().catch(() => {}), LATE_LOGS_MS);
      }
    }
  }

  // What a load reads now, and a check that the view is still the one it was read for.
  current() {
    const generation = this.generation;
    return { path: `/jobs/${encodeURIComponent(this.jobId)}`, parts: this.parts, mine: () => this.generation === generation };
  }

  async loadAttempts() {
    const { path, parts, mine } = this.current();
    const data = await api(`${path}/attempts?limit=100`);
    if (!mine()) return;
    parts.attempts.replaceChildren(...data.attempts.map((a) => {
      const tr = el("tr");
      tr.append(cell(a.attempt), cell(a.worker), timeCell(a.started_at), timeCell(a.ended_at), cell(a.outcome), cell(a.error));
      tr.children[4].className = a.outcome || "";
      return tr;
    }));
  }

  async loadWebhooks() {
    const { path, parts, mine } = this.current();
    const data = await api(`${path}/webhooks`);
    if (!mine()) return;
    parts.webhooks.textContent = data.webhook_url ? jsonText({ url: data.webhook_url, deliveries: data.deliveries }) : "none";
  }

  // The stored lines after the last one read (all of them the first time), a page at a time.
  async loadLogs() {
    const { path, mine } = this.current();
    const pane = this.logPane;
    for (let page = 0; page < LOG_PAGES; page++) {
      const query = new URLSearchParams({ limit: "1000" });
      if (pane.after != null) query.set("after", String(pane.after));
      let data;
      try {
        data = await api(`${path}/logs?${query}`);
      } catch (error) {
        if (mine()) pane.notice(`logs unavailable: ${error.message}`);
        return;
      }
      if (!mine()) return;
      data.lines.forEach((line) => pane.addStored(line));
      if (data.next_after == null) return;
      pane.after = data.next_after;
    }
    pane.notice(`more lines than these: GET ${path}/logs?after=${pane.after}`);
  }
}
