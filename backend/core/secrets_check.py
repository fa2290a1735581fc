"""The start-up check of secrets: outside development, a service process refuses to start with
a placeholder, an empty or a short secret, naming the setting (never its value).

"Development" is said explicitly, by ``JOBSERVICE_ENV=development``: ``make run`` (devstack),
``python backend/app.py`` and the test suite set it. Anything else, including unset, is a
deployment, because a forgotten setting must fail closed: the failure this guards against is a
stack started from an unedited ``.env.example``, whose values are public.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import parse_qs, unquote, urlsplit

from backend.core import redis_target
from backend.core.settings import SettingError, Settings, parse_api_keys

#: What every placeholder of .env.example and deploy/kubernetes/secret.example.yaml contains.
PLACEHOLDER = "CHANGE_ME"
#: Shortest secret accepted: 16 characters. `secrets.token_hex(32)` (what the docs suggest)
#: gives 64; anything a person could type from memory is shorter than a guessable limit.
MIN_LENGTH = 16
#: Which processes must have the internal token: the API checks it, workers send it.
NEEDS_INTERNAL_TOKEN = {"api", "worker"}
HOW_TO_MAKE_ONE = "make one with: python3 -c 'import secrets; print(secrets.token_hex(32))'"

log = logging.getLogger(__name__)


class InsecureSecrets(RuntimeError):
    """Raised at start-up when a secret is a placeholder, empty or too short."""


def is_development(settings: Settings) -> bool:
    return settings.jobservice_env.strip().lower() == "development"


def _fault(value: str | None) -> str | None:
    """What is wrong with a secret's value, or None when it will do."""
    if not value:
        return "is empty"
    if PLACEHOLDER.lower() in value.lower():
        return f"is still the {PLACEHOLDER} placeholder of the example settings"
    if len(value) < MIN_LENGTH:
        return f"is shorter than {MIN_LENGTH} characters"
    return None


#: URL schemes (before any ``+driver``) whose lone userinfo names a user, not a password.
DATABASE_SCHEMES = frozenset({"postgresql", "postgres", "mysql", "mariadb", "sqlite"})


def url_passwords(url: object) -> list[str]:
    """Every password ``url`` carries: its userinfo's (``scheme://user:pw@``, or a lone
    ``redis://token@``, which Redis takes as the password) and a ``?password=`` query value
    (redis-py and the database drivers read that too), as written in the URL (percent-escapes
    and all). A database URL's lone userinfo is a user name: its password may come from
    elsewhere (a pgpass file, a client certificate)."""
    if not url:
        return []
    try:
        parts = urlsplit(str(url))
        query = parse_qs(parts.query, keep_blank_values=True)
    except ValueError:
        return []
    found: list[str] = []
    # To the last "@" before any ?query, not urlsplit's netloc: that ends at a "/" which a
    # password pasted unencoded may hold (redis_target refuses such a URL, but masks it first).
    head = str(url).partition("://")[2].partition("?")[0]
    if "@" in head:
        userinfo = head.rsplit("@", 1)[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
        elif userinfo and parts.scheme.split("+", 1)[0] not in DATABASE_SCHEMES:
            found.append(userinfo)
    found.extend(query.get("password", []))
    return found


def faults(settings: Settings, *, role: str, environ: dict | None = None) -> list[str]:
    """Every problem with the secrets ``role`` (api, worker, scheduler, cli) starts with."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []

    token = settings.internal_service_token
    if token or role in NEEDS_INTERNAL_TOKEN:
        fault = _fault(str(token or ""))
        if fault == "is empty":
            fault = "is not set (the API refuses workers' reports without it)"
        if fault:
            problems.append(f"INTERNAL_SERVICE_TOKEN {fault}")

    # Optional secrets: checked when they are set at all. HEALTHCHECK_API_KEY (deploy/healthcheck.py)
    # and REDIS_PASSWORD (the Redis container) are deployment names the app never uses, so they
    # are no Settings fields: only this check reads them.
    for name, value in (
        ("WEBHOOK_SECRET", settings.webhook_secret),
        ("HEALTHCHECK_API_KEY", environ.get("HEALTHCHECK_API_KEY")),
        ("REDIS_PASSWORD", environ.get("REDIS_PASSWORD")),
        ("REDIS_SENTINEL_PASSWORD", settings.redis_sentinel_password),
    ):
        if value:
            fault = _fault(str(value))
            if fault:
                problems.append(f"{name} {fault}")

    try:
        keys = parse_api_keys(settings.api_keys)
    except ValueError:
        keys = {}  # create_app reports a malformed list itself
    for key, (owner, _admin) in keys.items():
        fault = _fault(key)
        if fault:
            problems.append(f"API_KEYS: the key of {owner!r} {fault}")

    for name, url in (("REDIS_URL", settings.redis_url), ("DATABASE_URL", settings.database_url)):
        for password in url_passwords(url):
            fault = _fault(unquote(password))
            if fault:
                problems.append(f"{name}: its password {fault}")
                break
    return problems


_WHO = {"api": "the API", "worker": "a worker", "scheduler": "the scheduler", "cli": "this command"}


def enforce(settings: Settings, *, role: str) -> None:
    """Refuse to start (outside development) when a secret will not do; and, always, when REDIS_URL
    or a REDIS_SSL_... setting will not do (before anything connects).

    Raises:
        SettingError: REDIS_URL, REDIS_SSL_CA_CERTS or REDIS_SSL_CERT_REQS, named, no password.
        InsecureSecrets: naming each setting at fault, never a value.
    """
    if settings.redis_url:  # unset: each process says so itself (the CLI's store commands need none)
        unchecked_by = redis_target.from_settings(settings).unchecked_by
        if unchecked_by:  # allowed, to try a connection out; never meant to go unnoticed
            log.warning(
                "%s: the Redis server's certificate is not checked, so anyone on the path can pose as "
                "Redis and read its password; set REDIS_SSL_CERT_REQS=required (and REDIS_SSL_CA_CERTS)",
                unchecked_by,
            )
    if is_development(settings):
        return
    problems = faults(settings, role=role)
    if problems:
        raise InsecureSecrets(
            f"refusing to start {_WHO.get(role, role)}: "
            + "; ".join(problems)
            + f". Set each to a random value of at least {MIN_LENGTH} characters ({HOW_TO_MAKE_ONE}), "
            "or set JOBSERVICE_ENV=development on a development machine."
        )


def enforce_or_exit(settings: Settings, *, role: str) -> None:
    """:func:`enforce` for a process's ``main``: exits with the reason instead of a traceback."""
    try:
        enforce(settings, role=role)
    except (InsecureSecrets, SettingError) as exc:
        raise SystemExit(
            f"refusing to start {_WHO.get(role, role)}: {exc}" if isinstance(exc, SettingError) else str(exc)
        ) from None
