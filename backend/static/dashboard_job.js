// The job view of /dashboard (click a job): status, progress and its last message, the wait in
// words, attempts, logs and live output. One job is shown at a time, and it alone is followed
// live, through its event stream (GET /jobs/<id>/events): no request per second per job.
"use strict";

import { $, api, authHeaders } from "./dashboard_api.js";
import { cell, el, jsonText, progressBar, setProgress, waitingNode } from "./dashboard_parts.js";
import { LogPane, OutputPane } from "./dashboard_panes.js";
import { openEventStream } from "./dashboard_stream.js";

const LIVE = ["PENDING", "QUEUED", "PROCESSING"];
// GET /jobs/<id>/logs pages (1,000 lines each) read when the view opens: the store keeps
// at most MAX_LOG_LINES_PER_JOB lines per attempt, so a few pages cover most jobs.
const LOG_PAGES = 5;
// After `end` the stream is closed, but the worker's last log lines may still be on their way
// to the store: read what came after the last line seen once more, this long after.
const LATE_LOGS_MS = 2000;

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
  }

  close() {
    if (this.stream) this.stream.close();
    clearTimeout(this.timer);
    this.stream = null;
    this.jobId = null;
  }

  async show(jobId) {
    this.close();
    this.jobId = jobId;
    this.progressAttempt = null;
    this.job = null;
    this.build();
    const mine = () => this.jobId === jobId;
    try {
      const job = await api(`/jobs/${encodeURIComponent(jobId)}`);
      if (!mine()) return;
      this.render(job);
      await Promise.all([this.loadAttempts(), this.loadWebhooks(), this.loadLogs()]);
    } catch (error) {
      if (mine()) this.parts.problem.textContent = error.message;
      return;
    }
    if (!mine()) return;
    this.stream = openEventStream(`/jobs/${encodeURIComponent(jobId)}/events`, {
      headers: authHeaders,
      onEvent: (event) => { if (mine()) this.onEvent(event); },
      onState: (state, detail) => { if (mine()) this.parts.stream.textContent = detail ? `${state}: ${detail}` : state; },
    });
  }

  // Called by the list's refresh: the wait (its reason, its queue position) changes without a
  // status change, so without a status event; the list, read every few seconds, has it.
  updateFromList(job) {
    if (this.job && job.job_id === this.jobId && job.status === this.job.status && LIVE.includes(job.status)) {
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
    ["Attempt", "Worker", "Started", "Ended", "Outcome", "Error"].forEach((t) => header.appendChild(el("th", t)));
    attempts.append(el("thead"), p.attempts);
    attempts.firstChild.appendChild(header);
    p.output = el("pre", null, "job-output empty");
    p.output.id = "job-output";
    p.logs = el("div", null, "job-logs");
    p.logs.id = "job-logs";
    p.webhooks = el("pre", null, "job-webhooks");
    p.problem = el("p", null, "error");
    this.root.replaceChildren(head, p.problem, progress, p.waiting, p.fields, section("Attempts", attempts),
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
      ["Checkpoint saved", job.checkpoint_at], ["Worker", job.worker], ["Created", job.created_at],
      ["Started", job.started_at], ["Completed", job.completed_at], ["Run at", job.run_at],
      ["Waiting for", (job.waiting_for || []).join(", ") || null], ["Error", job.error],
      ["Args", jsonText(job.args)], ["Kwargs", jsonText(job.kwargs)], ["Result", job.result == null ? null : jsonText(job.result)],
    ];
    p.fields.replaceChildren(...fields.filter(([, v]) => v != null && v !== "").flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
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
      this.render(data);
      if (changed || kind === "end") this.loadAttempts().catch((e) => { this.parts.problem.textContent = e.message; });
      if (kind === "end") {
        this.loadWebhooks().catch(() => {});
        const jobId = this.jobId;
        this.timer = setTimeout(() => { if (this.jobId === jobId) this.loadLogs().catch(() => {}); }, LATE_LOGS_MS);
      }
    }
  }

  async loadAttempts() {
    const data = await api(`/jobs/${encodeURIComponent(this.jobId)}/attempts?limit=100`);
    this.parts.attempts.replaceChildren(...data.attempts.map((a) => {
      const tr = el("tr");
      [a.attempt, a.worker, a.started_at, a.ended_at, a.outcome, a.error].forEach((v) => tr.appendChild(cell(v)));
      tr.children[4].className = a.outcome || "";
      return tr;
    }));
  }

  async loadWebhooks() {
    const data = await api(`/jobs/${encodeURIComponent(this.jobId)}/webhooks`);
    this.parts.webhooks.textContent = data.webhook_url ? jsonText({ url: data.webhook_url, deliveries: data.deliveries }) : "none";
  }

  // The stored lines after the last one read (all of them the first time), a page at a time.
  async loadLogs() {
    for (let page = 0; page < LOG_PAGES; page++) {
      const query = new URLSearchParams({ limit: "1000" });
      if (this.logPane.after != null) query.set("after", String(this.logPane.after));
      let data;
      try {
        data = await api(`/jobs/${encodeURIComponent(this.jobId)}/logs?${query}`);
      } catch (error) {
        this.logPane.notice(`logs unavailable: ${error.message}`);
        return;
      }
      data.lines.forEach((line) => this.logPane.addStored(line));
      if (data.next_after == null) return;
      this.logPane.after = data.next_after;
    }
    this.logPane.notice(`more lines than these: GET /jobs/${this.jobId}/logs?after=${this.logPane.after}`);
  }
}
