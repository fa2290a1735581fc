"""The jobs page at ``/dashboard``: what RQ Dashboard cannot show, because it does not know
the store. One server-rendered page; its script reads the JSON API (with the API key the
user enters, when keys are configured) and refreshes every second."""

from __future__ import annotations

from flask import Blueprint, render_template

from backend.tasks import all_tasks

bp = Blueprint("dashboard", __name__, template_folder="templates")


@bp.get("/dashboard")
def page():
    return render_template("dashboard.html", tasks=[spec.name for spec in all_tasks()])
