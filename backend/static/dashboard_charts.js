// The Activity panel of /dashboard, for admins: jobs completed and failed per step, the depth of
// each queue over time, and each task's run time p50/p95, for the last hour or the last day, from
// the history the service rolls up itself (GET /monitoring/history?window=hour|day): no
// Prometheus, no chart library, no CDN. The charts are SVG built node by node with the DOM
// (createElementNS, textContent), never from markup: task names are tenants' text. They are drawn
// at the width of their box and drawn again when it changes (a phone turned, a window resized).
"use strict";

import { api } from "./dashboard_api.js";
import { el } from "./dashboard_parts.js";

const SVG_NS = "http://www.w3.org/2000/svg";
// History moves by the minute: read it again at most this often (the queues are read every 5 s).
const HISTORY_REFRESH_MS = 30000;
const HEIGHT = 170;
const MARGIN = { top: 10, right: 10, bottom: 22, left: 38 };
// The run-time table shows at most this many tasks (the API caps them too).
const MAX_TASKS = 50;
const QUEUE_ORDER = ["high", "default", "low"];

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

// 0, 1, 2, 5, 10, 20, 50...: the smallest of these at or above value (the y axis's top).
export function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((top) => top >= value);
}

// 850 ms, 2.4 s, 3.1 min, 1.2 h; a dash when unknown.
export function durationText(ms) {
  if (ms == null || Number.isNaN(Number(ms))) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3600000) return `${(ms / 60000).toFixed(1)} min`;
  return `${(ms / 3600000).toFixed(1)} h`;
}

function clock(ms, withDay) {
  const at = new Date(ms);
  const time = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return withDay ? `${at.toLocaleDateString([], { weekday: "short" })} ${time}` : time;
}

// The frame both charts share: the plot's size, its y gridlines with their labels, the x labels
// (first, middle, last time) and an <svg> whose width is its box's, in CSS pixels.
function frame(width, top, range, withDay) {
  const plot = { x: MARGIN.left, y: MARGIN.top, w: width - MARGIN.left - MARGIN.right, h: HEIGHT - MARGIN.top - MARGIN.bottom };
  const root = svg("svg", { width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}`, class: "chart-svg" });
  for (const fraction of [0, 0.5, 1]) {
    const y = plot.y + plot.h * (1 - fraction);
    root.append(svg("line", { x1: plot.x, x2: plot.x + plot.w, y1: y, y2: y, class: fraction ? "grid" : "axis" }));
    // Counts are whole: a gridline halfway up a top of 5 carries no "2.5".
    const label = top * fraction;
    if (Number.isInteger(label)) root.append(svg("text", { x: plot.x - 5, y: y + 4, "text-anchor": "end", class: "tick y-tick" }, label));
  }
  const [start, end] = range;
  const xOf = (ms) => plot.x + (end > start ? ((ms - start) / (end - start)) * plot.w : plot.w / 2);
  [[start, "start"], [(start + end) / 2, "middle"], [end, "end"]].forEach(([ms, anchor]) => {
    root.append(svg("text", { x: xOf(ms), y: HEIGHT - 6, "text-anchor": anchor, class: "tick x-tick" }, clock(ms, withDay)));
  });
  return { root, plot, xOf, yOf: (v) => plot.y + plot.h * (1 - v / top) };
}

function emptyText(chart, text) {
  const { root, plot } = chart;
  root.append(svg("text", { x: plot.x + plot.w / 2, y: plot.y + plot.h / 2, "text-anchor": "middle", class: "chart-empty" }, text));
}

// A legend entry: a swatch of the series' colour (a CSS class) and its words.
function legendItem(kind, text) {
  const item = el("span", null, `legend-item ${kind}`);
  item.append(el("span", null, `swatch ${kind}`), el("span", text, "legend-text"));
  return item;
}

// The time both charts span: from the first step's start to the last step's end.
function timeRange(history) {
  const step = (history.step_seconds || 60) * 1000;
  const times = (history.points || []).map((p) => Date.parse(p.at));
  const span = history.window === "day" ? 86400000 : 3600000;
  return times.length ? [Math.min(...times), Math.max(...times) + step] : [Date.now() - span, Date.now()];
}

// Completed and failed per step, stacked bars (failed on top), a <title> per step (on hover).
export function jobsChart(width, history) {
  const points = history.points || [];
  const step = (history.step_seconds || 60) * 1000;
  const times = points.map((p) => Date.parse(p.at));
  const range = timeRange(history);
  const top = niceMax(Math.max(0, ...points.map((p) => (p.completed || 0) + (p.failed || 0))));
  const chart = frame(width, top, range, history.window === "day");
  const slot = Math.max(1, chart.xOf(range[0] + step) - chart.xOf(range[0]));
  const bar = Math.max(1, slot - (slot > 4 ? 1 : 0));
  let completed = 0;
  let failed = 0;
  points.forEach((p, i) => {
    const ok = p.completed || 0;
    const bad = p.failed || 0;
    completed += ok;
    failed += bad;
    if (!ok && !bad) return;
    const x = chart.xOf(times[i]);
    const group = svg("g", { class: "step" });
    group.append(svg("title", {}, `${clock(times[i], history.window === "day")}: ${ok} completed, ${bad} failed`));
    const base = chart.yOf(0);
    if (ok) group.append(svg("rect", { x, width: bar, y: chart.yOf(ok), height: base - chart.yOf(ok), class: "bar-completed" }));
    if (bad) group.append(svg("rect", { x, width: bar, y: chart.yOf(ok + bad), height: chart.yOf(ok) - chart.yOf(ok + bad), class: "bar-failed" }));
    chart.root.append(group);
  });
  if (!completed && !failed) emptyText(chart, "no job ended in this window");
  const per = step === 60000 ? "per minute" : `per ${Math.round(step / 60000)} minutes`;
  const legend = [legendItem("completed", `${completed} completed`), legendItem("failed", `${failed} failed`), el("span", per, "legend-note")];
  return { svg: chart.root, legend };
}

// One line per queue (high, default, low first), dots where it has few samples, its last depth in
// the legend. A sample is drawn in the middle of its step.
export function queuesChart(width, history) {
  const queues = history.queues || {};
  const names = Object.keys(queues).sort((a, b) => (QUEUE_ORDER.indexOf(a) + 1 || 99) - (QUEUE_ORDER.indexOf(b) + 1 || 99) || a.localeCompare(b));
  const series = names.map((name) => ({ name, samples: (queues[name] || []).map((s) => ({ at: Date.parse(s.at), depth: s.depth || 0 })) }));
  const times = series.flatMap((s) => s.samples.map((x) => x.at));
  const range = timeRange(history);
  const half = (history.step_seconds || 60) * 500;
  for (const s of series) for (const x of s.samples) x.at += half;
  const top = niceMax(Math.max(0, ...series.flatMap((s) => s.samples.map((x) => x.depth))));
  const chart = frame(width, top, range, history.window === "day");
  series.forEach((s, index) => {
    if (!s.samples.length) return;
    const kind = `queue-${index % 6}`;
    const group = svg("g", { class: `queue-line ${kind}`, "data-queue": s.name });
    group.append(svg("title", {}, `queue ${s.name}`));
    const coordinates = s.samples.map((x) => `${chart.xOf(x.at).toFixed(1)},${chart.yOf(x.depth).toFixed(1)}`);
    group.append(svg("polyline", { points: coordinates.join(" "), class: "line" }));
    // Dots only where there are few samples: a lone sample has no line to show it.
    if (s.samples.length <= 2) s.samples.forEach((x) => group.append(svg("circle", { cx: chart.xOf(x.at), cy: chart.yOf(x.depth), r: 3, class: "dot" })));
    chart.root.append(group);
  });
  if (!times.length) emptyText(chart, "no queue sampled yet");
  const legend = series.map((s, index) => {
    const last = s.samples.length ? s.samples[s.samples.length - 1].depth : null;
    return legendItem(`queue-${index % 6}`, last == null ? `${s.name}: no sample` : `${s.name}: ${last} waiting`);
  });
  return { svg: chart.root, legend };
}

export class ChartsPanel {
  constructor(root) {
    this.root = root;
    this.note = root.querySelector(".charts-note");
    this.jobsBox = root.querySelector("#chart-jobs");
    this.queuesBox = root.querySelector("#chart-queues");
    this.tasksBody = root.querySelector("table.run-times tbody");
    this.tasksNote = root.querySelector(".run-times-note");
    this.window = "hour";
    this.history = null;
    this.readAt = 0;
    this.absent = false; // an API without the route (404): not asked again
    this.drawnWidth = 0;
    for (const button of root.querySelectorAll(".window-toggle button")) {
      button.addEventListener("click", () => this.choose(button.dataset.window));
    }
    // Drawn again at the box's new width; at most once per frame however often it fires.
    let frameId = null;
    new ResizeObserver(() => {
      if (frameId === null) frameId = requestAnimationFrame(() => { frameId = null; if (this.history && this.width() !== this.drawnWidth) this.draw(); });
    }).observe(root.querySelector(".charts"));
  }

  choose(span) {
    if (span === this.window) return;
    this.window = span;
    for (const button of this.root.querySelectorAll(".window-toggle button")) button.setAttribute("aria-pressed", String(button.dataset.window === span));
    this.refresh(true);
  }

  // Called with each read of the queues: reads the history when it is due, now if forced or if
  // the panel is hidden (the first read, or a key that may read it again after one that may not).
  async refresh(force = false) {
    if (this.absent || (!force && !this.root.hidden && Date.now() - this.readAt < HISTORY_REFRESH_MS)) return;
    const span = this.window;
    this.readAt = Date.now();
    let data;
    try {
      data = await api(`/monitoring/history?window=${span}`);
    } catch (error) {
      if ([401, 403, 404].includes(error.status)) {
        this.absent = error.status === 404;
        this.root.hidden = true;
        return;
      }
      this.readAt = 0; // a store or Redis away: try again at the next read of the queues
      this.root.hidden = false;
      this.say(`Activity: ${error.message}`, "error");
      return;
    }
    if (span !== this.window) return; // the user chose the other window meanwhile
    this.root.hidden = false;
    this.say("", "");
    this.history = data;
    this.draw();
  }

  say(text, kind) {
    this.note.textContent = text;
    this.note.className = kind ? `charts-note ${kind}` : "charts-note";
  }

  // Each chart's width: its box's (both boxes share the row, or each has the row on a phone).
  width() { return Math.max(240, Math.floor(this.jobsBox.querySelector(".chart-box").clientWidth)); }

  draw() {
    const width = this.width();
    this.drawnWidth = width;
    for (const [box, make] of [[this.jobsBox, jobsChart], [this.queuesBox, queuesChart]]) {
      const { svg: node, legend } = make(width, this.history);
      box.querySelector(".chart-box").replaceChildren(node);
      box.querySelector(".legend").replaceChildren(...legend);
    }
    const span = this.history.window === "day" ? "last day" : "last hour";
    this.jobsBox.querySelector("figcaption").textContent = `Jobs ended, ${span}`;
    this.queuesBox.querySelector("figcaption").textContent = `Queue depth, ${span}`;
    this.showTasks(this.history.tasks || []);
  }

  showTasks(tasks) {
    this.tasksBody.replaceChildren(...tasks.slice(0, MAX_TASKS).map((t) => {
      const tr = el("tr");
      tr.dataset.task = t.task;
      tr.append(el("td", t.task, "task-name"), el("td", String(t.completed ?? 0)), el("td", String(t.failed ?? 0), t.failed ? "FAILED" : ""));
      tr.append(el("td", durationText(t.p50_ms), "p50"), el("td", durationText(t.p95_ms), "p95"));
      return tr;
    }));
    this.tasksBody.parentElement.hidden = !tasks.length;
    const more = tasks.length - Math.min(tasks.length, MAX_TASKS);
    this.tasksNote.textContent = !tasks.length ? "No job ended in this window." : more ? `and ${more} more tasks` : "";
  }
}
