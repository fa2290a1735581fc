// Pieces of the /dashboard page shared by the job list and the job view. Every value from the
// API is a tenant's text (task output, logs, errors): it goes in with textContent or as a text
// node, never as HTML, so that `<img src=x onerror=...>` in a log line shows as those characters.
"use strict";

export function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

export function cell(text) { return el("td", text ?? ""); }

// The page shows every time on the browser's clock, the clock the "Created after/before" inputs
// (datetime-local) read, so a time read off the list filters it as shown; the headers name the
// zone, and each time's title holds its UTC value too.
export const LOCAL_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";

const pad = (n) => String(n).padStart(2, "0");

// "2026-11-30 14:12:29" on the browser's clock for an API time (ISO, UTC); "" for none.
export function localText(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return String(iso);
  return `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} ${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}`;
}

// The hover text of a time: both clocks, named.
export function timeTitle(iso) { return `${localText(iso)} ${LOCAL_ZONE} · ${iso} UTC`; }

// A <time> showing an API time on the browser's clock, its UTC value in datetime and title.
export function localTime(iso) {
  const node = el("time", localText(iso), "local-time");
  node.dateTime = iso;
  node.title = timeTitle(iso);
  return node;
}

// A table cell holding a time (empty for none).
export function timeCell(iso) {
  const td = el("td");
  if (iso) td.append(localTime(iso));
  return td;
}

export function clampPercent(value) { return Math.min(100, Math.max(0, Number(value) || 0)); }

// A progress bar; its width is set through the DOM since the CSP refuses style="" in markup.
export function progressBar(percent) {
  const bar = el("span", null, "bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  const fill = el("span");
  bar.appendChild(fill);
  setProgress(bar, percent);
  return bar;
}

export function setProgress(bar, percent) {
  const value = clampPercent(percent);
  bar.setAttribute("aria-valuenow", String(value));
  bar.firstChild.style.width = `${value}%`;
}

// Words for each waiting_reason, for an API that sends no waiting_detail (or a reason this page
// does not know yet: then the reason itself is shown).
const REASONS = {
  queued: (job) => (job.queue_position != null ? `queued, position ${job.queue_position}` : "queued, waiting for a worker"),
  scheduled: () => "scheduled to run later",
  retry_backoff: () => "waiting to retry after a failure",
  snoozed: () => "snoozed by the task",
  dependencies: (job) => `waiting for ${(job.waiting_for || []).length || "the"} job(s) it depends on`,
  concurrency_limit: (job) => `waiting for a free slot of task ${job.task}`,
  rate_limit: () => "waiting for the rate limit",
  queue_paused: () => "its queue is paused",
  no_worker: () => "no live worker listens on its queue",
};

// "waiting for a free slot of task summarise (2 running)": the API's sentence when it sends one.
export function waitingWords(job) {
  if (!job || !job.waiting_reason) return "";
  if (job.waiting_detail) return job.waiting_detail;
  const words = REASONS[job.waiting_reason];
  return words ? words(job) : job.waiting_reason;
}

// "in 2 min 5 s" from now, or "now" once passed.
export function untilText(iso) {
  const ms = Date.parse(iso) - Date.now();
  if (!(ms > 0)) return "now";
  let s = Math.ceil(ms / 1000);
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60]]) {
    if (s >= size) { parts.push(`${Math.floor(s / size)} ${unit}`); s %= size; }
  }
  if (s || !parts.length) parts.push(`${s} s`);
  return "in " + parts.slice(0, 2).join(" ");
}

// A job's wait in words, with when it resumes; the countdown is refreshed by tickCountdowns().
export function waitingNode(job) {
  const node = el("div", null, "waiting");
  const words = waitingWords(job);
  if (!words) return node;
  node.append(el("span", words, "waiting-words"));
  if (job.resumes_at) {
    // The sentence often names the time already: here a countdown, the local time on hover.
    const countdown = el("time", untilText(job.resumes_at), "countdown");
    countdown.dataset.until = job.resumes_at;
    countdown.dateTime = job.resumes_at;
    countdown.title = timeTitle(job.resumes_at);
    node.append(" · resumes ", countdown);
  }
  node.firstChild.dataset.reason = job.waiting_reason;
  return node;
}

// Counts the "in 40 s" texts down: page-local, no request.
export function tickCountdowns() {
  for (const node of document.querySelectorAll(".countdown[data-until]")) node.textContent = untilText(node.dataset.until);
}

export function jsonText(value) { return value === undefined ? "" : JSON.stringify(value, null, 2); }
