// The /rq pages: read rq-dashboard's JSON endpoints and show them.
//
// Every value from the server (job results, errors, descriptions, worker and queue names,
// which tenants can fill) goes into the page as text: textContent and DOM nodes, never
// innerHTML or a template string compiled into HTML. Actions that change Redis are POSTs
// with X-Requested-With, so the API's cross-site guard lets them through from our own origin.
"use strict";

(function () {
  const config = document.body.dataset;
  const base = config.prefix + config.instance; // e.g. "/rq/0"
  const pollInterval = Math.max(500, Number(config.pollInterval) || 2500);

  // el("a", {href: url, className: "x"}, "text", otherNode): strings become text nodes.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name in node) node[name] = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const jobViewUrl = (id) => `${base}/view/job/${enc(id)}`;
  const jobsViewUrl = (queue, registry, perPage, order, page) =>
    `${base}/view/jobs/${enc(queue)}/${enc(registry)}/${enc(perPage)}/${enc(order)}/${enc(page)}`;

  function showProblem(message) {
    $("problem").textContent = message || "";
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error((body && body.error && body.error.message) || `${response.status} ${response.statusText}`);
    return body;
  }

  async function post(path) {
    const response = await fetch(config.prefix + path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Requested-With": "XMLHttpRequest" },
      body: "{}",
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error((body && body.error && body.error.message) || `${response.status} ${response.statusText}`);
    return body;
  }

  // A button that asks first (a native dialog: no script of ours is needed to draw it).
  function action(button, question, path, after) {
    if (!button) return;
    button.addEventListener("click", async (event) => {
      event.preventDefault();
      event.stopPropagation();
      if (question && !window.confirm(question)) return;
      try {
        const body = await post(path);
        if (body && body.status === "DISABLED") throw new Error("deleting is disabled (RQ_DASHBOARD_DISABLE_DELETE)");
        showProblem("");
        if (after) after(body);
      } catch (e) {
        showProblem(e.message);
      }
    });
  }

  function when(iso) {
    if (!iso) return "-";
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso);
    const seconds = Math.round((Date.now() - date.getTime()) / 1000);
    const ago =
      seconds < 60 ? `${seconds} s ago` : seconds < 3600 ? `${Math.round(seconds / 60)} min ago`
        : seconds < 86400 ? `${Math.round(seconds / 3600)} h ago` : `${Math.round(seconds / 86400)} days ago`;
    return `${date.toISOString().replace("T", " ").slice(0, 19)} UTC (${ago})`;
  }

  function fill(tbody, rows, columns, emptyText) {
    if (rows.length) tbody.replaceChildren(...rows);
    else tbody.replaceChildren(el("tr", {}, el("td", { colSpan: columns }, emptyText)));
  }

  const views = {
    async queues() {
      const data = await getJSON(`${base}/data/queues.json`);
      const counts = [
        ["queued", "count"], ["deferred", "deferred_job_registry_count"], ["scheduled", "scheduled_job_registry_count"],
        ["started", "started_job_registry_count"], ["finished", "finished_job_registry_count"],
        ["failed", "failed_job_registry_count"], ["canceled", "canceled_job_registry_count"],
      ];
      const rows = data.queues.map((q) =>
        el("tr", { dataset: { queue: q.name } }, el("td", {}, q.name),
          ...counts.map(([registry, field]) =>
            el("td", { className: "narrow" }, el("a", { href: jobsViewUrl(q.name, registry, 8, "asc", 1) }, q[field])))));
      fill(document.querySelector("#queues tbody"), rows, 8, "No queues.");
    },

    async workers() {
      const data = await getJSON(`${base}/data/workers.json`);
      const rows = data.workers.map((w) => {
        const current = w.current_job;
        const job = current && current !== "idle"
          ? el("td", { title: `Job ID: ${current.job_id}\nDescription: ${current.description || ""}\nCreated at: ${current.created_at}` },
            el("a", { href: jobViewUrl(current.job_id) }, current.call_string || current.job_id))
          : el("td", {}, "idle");
        const title = w.version && w.python_version ? `RQ ${w.version} / Python ${w.python_version}` : null;
        return el("tr", { dataset: { worker: w.name } }, el("td", { title }, w.name), el("td", {}, w.state), job,
          el("td", {}, (w.queues || []).join(", ")));
      });
      fill(document.querySelector("#workers tbody"), rows, 4, "No workers.");
    },

    async jobs() {
      const queue = config.queue;
      const registry = config.registry;
      const path = `${base}/data/jobs/${enc(queue)}/${enc(registry)}/${enc(config.perPage)}/${enc(config.order)}/${enc(config.page)}.json`;
      const data = await getJSON(path);
      const rows = data.jobs.map((job) => {
        const actions = el("td", { className: "actions narrow" });
        if (job.exc_info) {
          const requeue = el("button", { type: "button", className: "btn btn-outline-warning btn-sm", dataset: { role: "requeue-job-btn" } }, "Requeue");
          action(requeue, null, `job/${enc(job.id)}/requeue`, () => views.jobs().catch((e) => showProblem(e.message)));
          actions.append(requeue);
        }
        if (config.enableDelete) {
          const remove = el("button", { type: "button", className: "btn btn-outline-danger btn-sm", dataset: { role: "delete-job-btn" } }, "Delete");
          action(remove, `Delete job ${job.id}?`, `job/${enc(job.id)}/delete`, () => views.jobs().catch((e) => showProblem(e.message)));
          actions.append(remove);
        }
        const cell = el("td", {},
          el("span", { className: "description" }, job.description),
          el("div", { className: "job_id" }, el("a", { href: jobViewUrl(job.id) }, job.id)));
        if (job.exc_info) cell.append(el("span", { className: "end_date" }, `Failed ${when(job.ended_at)}`), el("pre", { className: "exc_info" }, job.exc_info));
        return el("tr", { dataset: { role: "job", jobId: job.id } }, cell, el("td", {}, when(job.created_at)), actions);
      });
      fill(document.querySelector("#jobs tbody"), rows, 3, "No jobs.");
      const pages = data.pagination;
      const link = (label, page, state) => el("li", { className: `page-item ${state || ""}` },
        el("a", { className: "page-link", href: jobsViewUrl(queue, registry, config.perPage, config.order, page) }, label));
      const current = Number(config.page);
      const items = [link("\u00ab", 1, current <= 1 ? "disabled" : ""), link("\u2039", Math.max(1, current - 1), current <= 1 ? "disabled" : "")];
      for (const p of pages.pages_in_window || []) items.push(link(p.number, p.number, p.number === current ? "active" : ""));
      const last = Math.max(1, pages.num_pages || 1);
      items.push(link("\u203a", Math.min(last, current + 1), current >= last ? "disabled" : ""), link("\u00bb", last, current >= last ? "disabled" : ""));
      $("pagination").replaceChildren(...items);
    },

    async job() {
      const job = await getJSON(`${base}/data/job/${enc(config.jobId)}.json`);
      const field = (label, ...value) => [el("dt", {}, label), el("dd", {}, ...value)];
      const dependencies = (job.depends_on || []).map((id, i) =>
        el("li", {}, job.depends_on_status && job.depends_on_status[i] === "active" ? el("a", { href: jobViewUrl(id) }, id) : `${id} (expired)`));
      $("job").replaceChildren(
        ...field("Description", job.description),
        ...field("Origin queue", job.origin),
        ...field("Status", job.status),
        ...field("Result", el("pre", { className: "value result" }, JSON.stringify(job.result, null, 2))),
        ...field("Metadata", el("pre", { className: "value" }, job.metadata)),
        ...field("Depends on", dependencies.length ? el("ul", {}, ...dependencies) : "-"),
        ...field("Created at", when(job.created_at)),
        ...field("Enqueued at", when(job.enqueued_at)),
        ...field("Started at", when(job.started_at)),
        ...field("Ended at", when(job.ended_at)),
        ...field("Exception info", el("pre", { className: "exc_info" }, job.exc_info || "-")),
      );
      $("requeue-job-btn").hidden = job.status !== "failed";
    },
  };

  function wireJobsPage() {
    const go = (changes) => {
      const next = {
        queue: $("select-queue").value || "default",
        registry: $("select-registry").value,
        perPage: $("select-per-page").value,
        order: $("select-order").value,
        ...changes,
      };
      window.location.assign(jobsViewUrl(next.queue, next.registry, next.perPage, next.order, 1));
    };
    ["select-queue", "select-registry", "select-order", "select-per-page"].forEach((id) => $(id).addEventListener("change", () => go({})));
    getJSON(`${base}/data/queues.json`).then((data) => {
      const names = data.queues.map((q) => q.name);
      if (!names.includes(config.queue)) names.unshift(config.queue);
      $("select-queue").replaceChildren(...names.map((name) => el("option", { value: name, selected: name === config.queue }, name)));
    }).catch((e) => showProblem(e.message));
    const reload = () => views.jobs().catch((e) => showProblem(e.message));
    const queue = enc(config.queue);
    action($("requeue-all-btn"), `Requeue all failed jobs of ${config.queue}?`, `requeue/${queue}`, reload);
    action($("compact-btn"), `Compact queue ${config.queue}?`, `queue/${queue}/compact`, reload);
    action($("empty-btn"), `Remove every ${config.registry} job of ${config.queue}?`, `queue/${queue}/${enc(config.registry)}/empty`, reload);
  }

  function wireJobPage() {
    const id = enc(config.jobId);
    action($("requeue-job-btn"), null, `job/${id}/requeue`, () => views.job().catch((e) => showProblem(e.message)));
    action($("delete-job-btn"), `Delete job ${config.jobId}?`, `job/${id}/delete`, () => window.location.assign(`${base}/view/queues`));
  }

  const render = views[config.view];
  if (!render) return;
  if (config.view === "jobs") wireJobsPage();
  if (config.view === "job") wireJobPage();

  async function loop() {
    if ($("autorefresh").checked) {
      try {
        await render();
        showProblem("");
      } catch (e) {
        showProblem(e.message);
      }
    }
    setTimeout(loop, pollInterval);
  }
  loop();
})();
