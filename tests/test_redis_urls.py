"""REDIS_URL and the REDIS_SSL_... / REDIS_SENTINEL_PASSWORD settings: what ``connect`` accepts,
and that every process refuses a bad one as it starts, naming the setting, never the password."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from redis.sentinel import SentinelConnectionPool

from backend.app import create_app
from backend.broker.connection import connect, connect_for
from backend.core.redis_target import masked
from backend.core.secrets_check import enforce
from backend.core.settings import SettingError, Settings
from tests.conftest import ROOT, TOKEN

pytestmark = pytest.mark.one_pass(reason="how each process reads REDIS_URL")

SECRET = "s3cret-password-xyz"


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/2", "FailoverConnection"),
        (f"rediss://:{SECRET}@redis.example.com:6380/0", "FailoverSSLConnection"),
        ("unix:///run/redis/redis.sock?db=1", "FailoverUnixConnection"),
    ],
)
def test_server_urls_open_raw_byte_connections_that_drop_a_demoted_master(url, kind):
    client = connect(url)
    assert client.connection_pool.connection_class.__name__ == kind
    assert client.connection_pool.connection_kwargs["decode_responses"] is False


def test_a_sentinel_url_opens_the_named_master_through_its_sentinels():
    client = connect(
        f"redis+sentinel://:{SECRET}@10.0.0.1:26379,[::1]:26380,sentinel-c/jobs-master/3",
        sentinel_password="sentinel-secret-123",
    )
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "jobs-master"
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == SECRET
    assert pool.connection_kwargs["decode_responses"] is False
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in sentinels] == [("10.0.0.1", 26379), ("::1", 26380), ("sentinel-c", 26379)]  # fmt: skip
    # The Sentinels' own password, not the master's.
    assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {"sentinel-secret-123"}


def test_tls_settings_reach_a_rediss_connection(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a connection is made")
    settings = Settings.load(
        {
            "REDIS_URL": "rediss://redis.example.com:6380/0",
            "REDIS_SSL_CA_CERTS": str(ca),
            "REDIS_SSL_CERT_REQS": "none",
        },
        environ={},
    )
    kwargs = connect_for(settings).connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == str(ca) and kwargs["ssl_cert_reqs"] == "none"


BAD = [
    ("http://:{pw}@127.0.0.1:6379/0", {}, "REDIS_URL must start with one of"),
    ("redis+sentinel://:{pw}@127.0.0.1:26379", {}, "REDIS_URL names no master"),
    ("redis+sentinel://:{pw}@127.0.0.1:26379/", {}, "REDIS_URL names no master"),
    ("redis+sentinel://:{pw}@127.0.0.1:abc/mymaster/0", {}, "REDIS_URL has a bad Sentinel port"),
    ("redis+sentinel://:{pw}@127.0.0.1:26379/mymaster/zero", {}, "REDIS_URL names database 'zero'"),
    ("redis://:{pw}@127.0.0.1:99999/0", {}, "REDIS_URL has a bad port"),
    ("redis://:{pw}@127.0.0.1:6379/first", {}, "REDIS_URL names database 'first'"),
    ("redis://:{pw}@127.0.0.1:6379/0?decode_responses=true", {}, "REDIS_URL asks for decode_responses"),
    ("rediss://:{pw}@127.0.0.1:6379/0", {"REDIS_SSL_CERT_REQS": "sometimes"}, "REDIS_SSL_CERT_REQS must be one of"),
    ("rediss://:{pw}@127.0.0.1:6379/0", {"REDIS_SSL_CA_CERTS": "/nonexistent/ca.pem"}, "REDIS_SSL_CA_CERTS names no"),
    # A password pasted with an unencoded "/" (Azure's access keys have them): refused, masked whole.
    ("redis://:ab/{pw}@host:6379/0", {}, "REDIS_URL has a '/' in its password (before '@'); percent-encode it"),
    ("rediss://default:ab/{pw}@host:6380", {}, "REDIS_URL has a '/' in its password"),
    ("redis+sentinel://:ab/{pw}@h1:26379/m/0", {}, "REDIS_URL has a '/' in its password"),
    # TLS settings with a scheme that has no TLS: the connection would be plaintext.
    (
        "redis://:{pw}@h:6379/0",
        {"REDIS_SSL_CA_CERTS": __file__},
        "REDIS_SSL_CA_CERTS is set, but REDIS_URL is redis://",
    ),
    (
        "redis+sentinel://:{pw}@h:26379/m",
        {"REDIS_SSL_CERT_REQS": "required"},
        "REDIS_SSL_CERT_REQS is set, but REDIS_URL is redis+sentinel://",
    ),
    (
        "unix:///run/redis.sock?password={pw}",
        {"REDIS_SSL_CERT_REQS": "none"},
        "REDIS_SSL_CERT_REQS is set, but REDIS_URL is unix://",
    ),
    ("redis://:{pw}@h:6379/0?ssl_cert_reqs=required", {}, "REDIS_URL has ?ssl_... options, but redis:// is not TLS"),
    ("rediss://:{pw}@h:6380/0?ssl_cert_reqs=maybe", {}, "REDIS_URL has ssl_cert_reqs='maybe'; it must be one of"),
    # Sentinel addresses that can never work.
    ("redis+sentinel://,/m", {}, "REDIS_URL names no Sentinel host"),
    ("redis+sentinel://:{pw}@ , /m", {}, "REDIS_URL names no Sentinel host"),
    ("redis+sentinel://::1/m", {}, "without brackets; write it as [::1]:26379"),
    ("redis+sentinel://:{pw}@fe80::1:26379/m/0", {}, "without brackets; write it as [::1]:26379"),
    ("redis+sentinel://:{pw}@[::1:26379/m/0", {}, "with '[' but no ']'; write IPv6 as [::1]:26379"),
    # A lone name before "@" is a user name (redis-py's reading of redis://name@host), not a password.
    ("redis+sentinel://{pw}@h/m", {}, "REDIS_URL names a user but no password: a lone name before '@' is a user name"),
    ("redis://{pw}@h:6379/0", {}, "REDIS_URL names a user but no password"),
]


@pytest.mark.parametrize(("url", "extra", "message"), BAD)
def test_a_bad_redis_setting_is_refused_naming_it_without_the_password(url, extra, message):
    settings = Settings.load({"REDIS_URL": url.format(pw=SECRET), **extra}, environ={})
    with pytest.raises(SettingError) as refused:
        connect_for(settings)
    assert message in str(refused.value)
    assert SECRET not in str(refused.value)
    assert "ab/" not in str(refused.value)  # nor the part of a password before a "/"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:ab/{SECRET}@host:6379/0", "redis://***@host:6379/0"),
        (f"redis+sentinel://:ab/{SECRET}@h1:26379/m/0", "redis+sentinel://***@h1:26379/m/0"),
        (f"rediss://:{SECRET}@host:6380/0?ssl_cert_reqs=none", "rediss://***@host:6380/0?***"),
        ("redis://host:6379/0", "redis://host:6379/0"),
    ],
)
def test_a_quoted_url_shows_where_but_nothing_before_its_last_at(url, shown):
    assert masked(url) == shown


@pytest.mark.parametrize(
    ("url", "extra", "warned"),
    [
        ("rediss://h:6380/0", {"REDIS_SSL_CERT_REQS": "none"}, "REDIS_SSL_CERT_REQS=none"),
        ("rediss://h:6380/0?ssl_cert_reqs=none", {"REDIS_SSL_CERT_REQS": "required"}, "?ssl_cert_reqs=none"),
        ("rediss://h:6380/0?ssl_cert_reqs=required", {"REDIS_SSL_CERT_REQS": "none"}, None),  # the URL wins
        ("rediss://h:6380/0", {"REDIS_SSL_CERT_REQS": "required"}, None),
    ],
)
def test_certificate_checks_turned_off_are_warned_about_at_start(url, extra, warned, caplog):
    settings = Settings.load({"REDIS_URL": url, "JOBSERVICE_ENV": "development", **extra}, environ={})
    with caplog.at_level(logging.WARNING):
        enforce(settings, role="cli")
    found = [record.getMessage() for record in caplog.records if "certificate is not checked" in record.getMessage()]
    if warned:
        assert len(found) == 1 and warned in found[0], found
    else:
        assert not found, found


def test_the_api_refuses_to_start_on_a_bad_redis_url(tmp_path):
    with pytest.raises(SettingError, match="REDIS_URL names no master") as refused:
        create_app(
            {"REDIS_URL": f"redis+sentinel://:{SECRET}@127.0.0.1:26379", "DATABASE_URL": f"sqlite:///{tmp_path}/j.db"}
        )
    assert SECRET not in str(refused.value)


def test_worker_scheduler_and_commands_refuse_to_start_on_a_bad_redis_url(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": f"redis+sentinel://:{SECRET}@127.0.0.1:26379/mymaster/x",
        "DATABASE_URL": f"sqlite:///{tmp_path}/jobs.db",
        "INTERNAL_SERVICE_TOKEN": TOKEN,
        "JOBSERVICE_ENV": "development",
    }
    commands = {
        "worker": [sys.executable, "backend/worker.py", "--burst"],
        "scheduler": [sys.executable, "backend/scheduler.py"],
        "command": [sys.executable, "-m", "backend", "recover"],
    }
    # All at once: each is mostly the interpreter's start-up.
    started = {
        name: subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for name, command in commands.items()
    }
    for name, process in started.items():
        output = process.communicate(timeout=60)[0].decode(errors="replace")
        assert process.returncode != 0, (name, output)
        assert "REDIS_URL names database 'x'" in output, (name, output)
        assert SECRET not in output, (name, output)
        assert "Traceback" not in output, (name, output)
