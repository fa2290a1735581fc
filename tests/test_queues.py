"""The queue adapter's connection and the way it hands arguments to RQ."""

from __future__ import annotations

import pytest

from backend.api.context import services
from backend.broker.connection import connect


def test_the_rq_connection_never_decodes_responses(redis_url):
    connection = connect(redis_url)
    assert connection.connection_pool.connection_kwargs.get("decode_responses") is False
    connection.set("raw", b"\xff\xfe")
    assert connection.get("raw") == b"\xff\xfe"


def test_a_url_asking_for_decode_responses_is_refused(redis_url):
    with pytest.raises(ValueError, match="decode_responses"):
        connect(f"{redis_url}?decode_responses=True")


def test_the_app_and_worker_connections_do_not_decode(app):
    assert services(app).redis.connection_pool.connection_kwargs.get("decode_responses") is False


@pytest.mark.parametrize("setting", ["RQ_RESULT_TTL", "RQ_FAILURE_TTL"])
def test_an_outcome_ttl_too_short_to_read_back_is_refused_at_start(settings, setting):
    from backend.app import create_app

    settings[setting] = 0
    with pytest.raises(ValueError, match=f"{setting} must be at least 60 seconds"):
        create_app(settings)
