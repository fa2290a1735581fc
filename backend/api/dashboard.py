"""The jobs page at ``/dashboard``: what RQ Dashboard cannot show, because it does not know
the store. A static page; its scripts (``static/dashboard*.js``, ES modules) read the JSON API
(with the API key the user enters, when keys are configured): the list every 5 seconds, and the
job that is open live, from its event stream (``GET /jobs/<id>/events``); for an admin's key also
the queues (``GET /queues``, with Pause/Resume buttons), the rate limits and the workers
(``GET /monitoring/queue/workers``) every 5 seconds, and the Activity charts (jobs ended per
minute, queue depth, run time p50/p95 per task, drawn as SVG from ``GET /monitoring/history``)
every 30 seconds. The job list's search filters are ``GET /jobs``'s own parameters.

No build step and nothing from another origin: the page works offline, under the strict
Content-Security-Policy of ``html_security`` (no inline script or style).

The page itself names no task and no job: anyone may load it, but with API keys set only a
caller with a key may list tasks (``GET /tasks`` answers 401 without one).
"""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("dashboard", __name__, template_folder="templates")


@bp.get("/dashboard")
def page():
    return render_template("dashboard.html")
