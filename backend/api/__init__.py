"""The HTTP API as blueprints; ``register`` mounts them on an app."""

from __future__ import annotations

from flask import Flask

from backend.api import internal, jobs, monitoring, tasks


def register(app: Flask) -> None:
    for module in (tasks, jobs, internal, monitoring):
        app.register_blueprint(module.bp)
