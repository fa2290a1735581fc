"""Secrets: never printed or logged, and never a placeholder, empty or short at start-up.

The processes are the real ones (``python -m backend``, ``python backend/worker.py``,
``python backend/scheduler.py``, gunicorn with the shipped configuration), started with
the environment a deployment would give them and without JOBSERVICE_ENV=development.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from backend.app import create_app
from backend.core import logs
from backend.core.secrets_check import InsecureSecrets
from backend.dev.redis_server import free_port
from tests.conftest import ROOT, TASK_MODULES

PASSWORD = "s3cret-redis-pw-0123456789abcdef"
GOOD = {
    "INTERNAL_SERVICE_TOKEN": "internal-token-0123456789abcdef",
    "API_KEYS": "ops:admin-key-0123456789abcdef:admin,app:client-key-0123456789abcdef",
    "WEBHOOK_SECRET": "webhook-secret-0123456789abcdef",
}


def example_env() -> dict[str, str]:
    """The settings of .env.example, as docker-compose would pass them (placeholders and all)."""
    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if line.startswith("# REDIS_URL="):  # the commented example that systemd users copy
            line = line.removeprefix("# ")
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            env[name] = value
    return env


def deployment_env(**settings: str) -> dict[str, str]:
    """A deployment's environment: no JOBSERVICE_ENV=development."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1", **settings}


def run(args: list[str], env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# -- credentials never printed ----------------------------------------------------------


def test_a_command_run_with_redis_down_does_not_print_the_redis_password(store_url):
    # Given a Redis URL with a password, pointing at a port where nothing listens
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    env = deployment_env(REDIS_URL=url, DATABASE_URL=store_url, TASK_MODULES=TASK_MODULES)

    # When an operator runs a maintenance command
    result = run([sys.executable, "-m", "backend", "cleanup", "--dry-run"], env)

    # Then it fails saying where Redis was expected, with the password masked
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert PASSWORD not in output
    assert "redis://:***@127.0.0.1" in output, output


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("redis://127.0.0.1:{port}/0?password=S3cretQueryPassw0rd", "S3cretQueryPassw0rd"),
        ('redis://default:pa"ssw0rd-secret-xyz@127.0.0.1:{port}/0', 'pa"ssw0rd-secret-xyz'),
        ("redis://default:p@ss'w0rd-secret-xyz@127.0.0.1:{port}/0", "p@ss'w0rd-secret-xyz"),
    ],
    ids=["query-password", "double-quote", "at-and-single-quote"],
)
def test_clear_queues_with_redis_down_masks_every_form_of_redis_password(store_url, url, password):
    # Given a Redis URL whose password is a ?password= parameter, or holds a quote or an "@"
    env = deployment_env(
        REDIS_URL=url.format(port=free_port()),
        DATABASE_URL=store_url,
        TASK_MODULES=TASK_MODULES,
    )

    # When an operator clears the queues while Redis is down
    result = run([sys.executable, "-m", "backend", "clear-queues", "--yes"], env)

    # Then the command fails naming where Redis was expected, and no piece of the password shows
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Redis is unreachable at redis://" in output, output
    assert "127.0.0.1" in output
    for piece in (password, password[:6], password[-6:]):
        assert piece not in output, output


def test_a_short_query_password_is_refused_at_start(store_url):
    # Given a Redis URL carrying a short password as ?password= (redis-py reads it)
    env = deployment_env(
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0?password=short",
        DATABASE_URL=store_url,
        TASK_MODULES=TASK_MODULES,
    )

    # When a command starts, then the secrets check refuses it, naming the setting
    result = run([sys.executable, "-m", "backend", "clear-queues", "--yes"], env)
    assert result.returncode != 0
    assert "REDIS_URL: its password is shorter than 16 characters" in result.stdout + result.stderr, result.stderr
    assert "short" not in (result.stdout + result.stderr).replace("shorter", "")


def test_every_log_line_and_traceback_masks_credentials(capfd):
    # Given the service's logging set up (as every process does), and a text and a JSON
    # handler of the kinds it uses
    logs.configure(fmt="text", level="INFO", settings=GOOD)
    logger = logging.getLogger("backend.test_secrets")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    text_handler = logging.StreamHandler(sys.stderr)
    text_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    json_handler = logging.StreamHandler(sys.stdout)
    json_handler.setFormatter(logs.JsonFormatter())
    logger.addHandler(text_handler)
    logger.addHandler(json_handler)
    try:
        # When lines carry a Redis URL, a database URL and a secret, as text, as arguments
        # and inside an exception's traceback
        logger.warning("connecting to redis://:%s@redis:6379/0", PASSWORD)
        logger.warning("store at postgresql://jobs:%s@db/jobs", PASSWORD)
        logger.warning("token is %s", GOOD["INTERNAL_SERVICE_TOKEN"])
        try:
            raise ConnectionError(f"cannot reach rediss://default:{PASSWORD}@cache:6380")
        except ConnectionError:
            logger.exception("Redis down")
    finally:
        logger.removeHandler(text_handler)
        logger.removeHandler(json_handler)

    # Then neither the password nor the secret appears, and the URLs still say where
    out, err = capfd.readouterr()
    assert PASSWORD not in out + err
    assert GOOD["INTERNAL_SERVICE_TOKEN"] not in out + err
    assert "redis://:***@redis:6379/0" in err and "postgresql://jobs:***@db/jobs" in err
    assert "rediss://default:***@cache:6380" in err
    entries = [json.loads(line) for line in out.splitlines()]
    assert "rediss://default:***@cache:6380" in entries[-1]["exc"]


def test_redact_masks_userinfo_only():
    assert logs.redact("redis://:pw@h:1/0 and redis://h:2/0") == "redis://:***@h:1/0 and redis://h:2/0"
    assert logs.redact("amqp://user:pw@h/vhost") == "amqp://user:***@h/vhost"
    assert logs.redact("redis://tokenonly@h") == "redis://***@h"
    assert logs.redact("mail me at someone@example.com") == "mail me at someone@example.com"
    assert logs.redact('redis://default:pa"ss@w0rd@h:1/0') == "redis://default:***@h:1/0"
    assert logs.redact("redis://h/0?db=1&password=pw-1&x=2") == "redis://h/0?db=1&password=***&x=2"
    assert logs.redact("GET /jobs?token=abc HTTP/1.1") == "GET /jobs?token=*** HTTP/1.1"


def test_redact_masks_a_password_holding_an_unencoded_slash():
    # An Azure access key pasted into a URL as it is: everything up to the last "@" is userinfo.
    assert logs.redact("got 'redis://:pa/ss@host:6379/0'") == "got 'redis://:***@host:6379/0'"
    assert logs.redact("redis+sentinel://:se/cret@h1:26379/m/0 down") == "redis+sentinel://:***@h1:26379/m/0 down"


def test_redact_takes_linear_time_on_a_tenant_message_of_schemes():
    # A task failing with a message of a megabyte of "a://" is logged (RQ logs the traceback),
    # and every record goes through redact: the pattern that scanned each "a://" to the end of
    # the text took ~17 minutes here (pytest's 120 s timeout fails this test); a bounded one is
    # linear. The text holds no credential (an "@", but no userinfo), so it comes back whole.
    text = "RuntimeError: from bob@example.com: " + "a://" * 262_144
    assert logs.redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "pip install git+https://github.com/org/repo.git@v1.2.3",
        "GET http://h/a?next=/b@c",
        '{"url":"https://api.example.com/v1/items","owner":"bob@example.com"}',
        '{"url":"https://api.example.com:443/v1","owner":"bob@example.com"}',
    ],
    ids=["git-ref", "path-then-at", "json-email", "json-port-email"],
)
def test_redact_leaves_an_at_after_a_url_path_alone(text):
    # An "@" after a URL's host and path (a git ref, a query, the next JSON field's email) is
    # not the end of a userinfo: the text comes back as it was, quotes and all.
    assert logs.redact(text) == text


def test_the_password_of_a_url_setting_is_masked_wherever_it_appears():
    # Given a Redis URL setting with a password, remembered as every process does at start
    secret = "pa%22ss-0123456789abcdef"
    logs.remember_secrets({"REDIS_URL": f"redis://default:{secret}@redis:6379/0"})
    try:
        # Then a driver's message quoting the password bare, escaped or decoded, is masked
        line = logs.redact(f'AUTH failed for {secret}; tried pa"ss-0123456789abcdef')
        assert "0123456789abcdef" not in line, line
    finally:
        logs.remember_secrets({})


# -- refusing to start -------------------------------------------------------------------


def test_the_api_refuses_to_start_with_the_example_settings_naming_each(store_url):
    # Given the unedited .env.example and the shipped gunicorn configuration
    env = deployment_env(
        **{
            **example_env(),
            "DATABASE_URL": store_url,
            "GUNICORN_BIND": f"127.0.0.1:{free_port()}",
            "GUNICORN_WORKERS": "1",
        }
    )

    # When the API starts
    result = run([sys.executable, "-m", "gunicorn", "-c", "backend/gunicorn_conf.py", "backend.app:create_app()"], env)

    # Then it exits, naming every setting at fault and none of their values
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for name in ("INTERNAL_SERVICE_TOKEN", "WEBHOOK_SECRET", "HEALTHCHECK_API_KEY", "REDIS_URL", "'ops'", "'app'"):
        assert name in output, (name, output)
    assert "CHANGE_ME_" not in output, output


def test_a_worker_refuses_to_start_with_the_example_settings():
    # Given the unedited .env.example
    env = deployment_env(**example_env())

    # When a worker starts
    result = run([sys.executable, "backend/worker.py", "--name", "w-placeholder"], env, timeout=30)

    # Then it exits at once, naming the settings
    assert result.returncode != 0
    assert "INTERNAL_SERVICE_TOKEN" in result.stderr and "REDIS_URL" in result.stderr, result.stderr
    assert "CHANGE_ME_" not in result.stdout + result.stderr


def test_the_scheduler_refuses_a_short_redis_password():
    env = deployment_env(REDIS_URL=f"redis://:short@127.0.0.1:{free_port()}/0", TASK_MODULES=TASK_MODULES)

    result = run([sys.executable, "backend/scheduler.py"], env, timeout=30)

    assert result.returncode != 0
    assert "REDIS_URL: its password is shorter than 16 characters" in result.stderr, result.stderr
    assert "short@" not in result.stderr


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"INTERNAL_SERVICE_TOKEN": None}, "INTERNAL_SERVICE_TOKEN is not set"),
        ({"INTERNAL_SERVICE_TOKEN": "too-short"}, "INTERNAL_SERVICE_TOKEN is shorter than 16"),
        ({"WEBHOOK_SECRET": "CHANGE_ME_webhook_secret"}, "WEBHOOK_SECRET is still the CHANGE_ME placeholder"),
        ({"API_KEYS": "ops:admin-key-0123456789abcdef:admin,app:abc"}, "API_KEYS: the key of 'app' is shorter"),
    ],
)
def test_create_app_outside_development_refuses_each_bad_secret(settings, change, named):
    # Given settings that are fine but for one secret, outside development
    settings.update(GOOD, JOBSERVICE_ENV="production")
    settings.update(change)

    # When the API is built, then it refuses, naming the setting
    with pytest.raises(InsecureSecrets, match=named):
        create_app(settings)


def test_good_secrets_start_outside_development_and_development_starts_with_anything(settings):
    settings.update(GOOD, JOBSERVICE_ENV="production")
    assert create_app(settings).test_client().get("/openapi.json").status_code == 200

    settings.update(JOBSERVICE_ENV="development", INTERNAL_SERVICE_TOKEN="dev", API_KEYS="me:k1:admin")
    assert create_app(settings).test_client().get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    "url, passwords",
    [
        # A database URL's lone userinfo is a user name: the password comes from a pgpass file,
        # a client certificate or trust, and there is nothing to check.
        ("postgresql+psycopg://jobs@db:5432/jobs", []),
        ("postgresql://jobs:short@db/jobs", ["short"]),
        ("postgresql+psycopg://jobs@db/jobs?password=short", ["short"]),
        # Redis takes a lone userinfo as the password (AUTH <token>).
        ("redis://token@redis:6379/0", ["token"]),
        ("rediss://user:pw@redis:6379/0", ["pw"]),
        ("redis://:pa/ss@redis:6379/0", ["pa/ss"]),  # a "/" pasted unencoded: still the password
    ],
)
def test_a_database_user_without_a_password_is_not_taken_for_a_short_password(url, passwords):
    from backend.core.secrets_check import url_passwords

    assert url_passwords(url) == passwords
