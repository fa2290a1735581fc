"""The jobs page at ``/dashboard``: what RQ Dashboard cannot show, because it does not know
the store. A static page; its script (``static/dashboard.js``) reads the JSON API (with the
API key the user enters, when keys are configured) and refreshes every second.

The page itself names no task and no job: anyone may load it, but with API keys set only a
caller with a key may list tasks (``GET /tasks`` answers 401 without one).
"""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("dashboard", __name__, template_folder="templates")


@bp.get("/dashboard")
def page():
    return render_template("dashboard.html")
