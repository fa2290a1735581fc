"""The jobs page at ``/dashboard``: what RQ Dashboard cannot show, because it does not know
the store. A static page; its scripts (``static/dashboard*.js``, ES modules) read the JSON API
(with the API key the user enters, when keys are configured): the list every 5 seconds, and the
job that is open live, from its event stream (``GET /jobs/<id>/events``); for an admin's key also
the queues (``GET /queues``, with Pause/Resume buttons) and the rate limits every 5 seconds.

The page itself names no task and no job: anyone may load it, but with API keys set only a
caller with a key may list tasks (``GET /tasks`` answers 401 without one).
"""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("dashboard", __name__, template_folder="templates")


@bp.get("/dashboard")
def page():
    return render_template("dashboard.html")
