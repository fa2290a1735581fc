"""The API's one accessor for its settings and service objects: ``settings()``, ``services()``.

Routes ask these for settings and service objects, never ``current_app.config`` or
``current_app.extensions`` by key, so a setting is read as its type and a service object is
found in one place. (``app.extensions`` still holds a few modules' own state under their keys:
the parsed API keys, the browser guard's hosts and origins, the metrics collector, the webhook
host resolver, the background threads; and ``/rq`` reads rq-dashboard's two settings from
``app.config``, where rq-dashboard's own views read them.)
"""

from __future__ import annotations

from flask import Flask, current_app

from backend.core.settings import Settings
from backend.services import Services

_KEY = "jobservice"


def install(app: Flask, services: Services, *, api_keys: dict[str, tuple[str, bool]]) -> None:
    """Attach ``services`` (and their settings) and the parsed ``api_keys`` to ``app``; ``create_app`` calls it once."""
    app.extensions[_KEY] = services
    app.extensions["api_keys"] = api_keys
    # Flask and flask-limiter read some settings (MAX_CONTENT_LENGTH, the limits) from app.config.
    app.config.update(services.settings.as_config())


def installed(app: object) -> bool:
    """Whether ``app`` is an API that ``create_app`` built (it has service objects)."""
    return isinstance(app, Flask) and _KEY in app.extensions


def services(app: Flask | None = None) -> Services:
    """The service objects of ``app`` (the current app by default)."""
    return (app or current_app).extensions[_KEY]


def settings(app: Flask | None = None) -> Settings:
    """The settings of ``app`` (the current app by default)."""
    return services(app).settings


def api_keys(app: Flask | None = None) -> dict[str, tuple[str, bool]]:
    """The client keys of ``app`` (the current app by default), parsed from API_KEYS: {key: (owner,
    is_admin)}; empty when off."""
    return (app or current_app).extensions["api_keys"]


def update_settings(app: Flask, **changes: object) -> Settings:
    """Change settings of a running app (by capital names): for tests and tools, not requests.

    Raises:
        SettingError: a value is not of its setting's type, or names no setting.
    """
    bundle = services(app)
    bundle.settings = bundle.settings.replace(**changes)
    app.config.update({name: getattr(bundle.settings, name.lower()) for name in changes})
    return bundle.settings
