"""Signed webhooks delivered to a real local HTTP receiver, retried, recorded, and guarded."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest

from backend.api.context import services
from backend.app import create_app, start_background
from backend.core.errors import ValidationFailed
from backend.webhooks.ssrf import check_webhook_url
from tests.helpers import wait_until
from tests.receivers import receivers

SECRET = "whsec_" + base64.b64encode(b"test-secret-bytes").decode()


@pytest.fixture
def receiver():
    with receivers() as make:
        yield make


@pytest.fixture
def hook_settings(settings):
    settings.update(
        {
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_ALLOW_LOOPBACK": 1,
            "WEBHOOK_BACKOFF_SECONDS": 0.2,
            "WEBHOOK_INTERVAL": 0.1,
        }
    )
    return settings


def verify(request: dict) -> dict:
    """The verification recipe of backend/webhooks/dispatcher.py, as a receiver would run it."""
    secret = base64.b64decode(SECRET.removeprefix("whsec_"))
    headers = request["headers"]
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + request["body"]
    expected = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
    assert hmac.compare_digest(headers["webhook-signature"], f"v1,{expected}")
    assert abs(time.time() - int(headers["webhook-timestamp"])) < 60
    return json.loads(request["body"])


def test_a_completed_job_posts_a_signed_webhook_retried_after_a_500(hook_settings, receiver, start_worker):
    # Given a receiver that fails once, then accepts
    hook = receiver([500, 200])
    app = start_background(create_app(hook_settings))
    client = app.test_client()
    # (start_worker reports to the ``app`` fixture's live server, which shares the store)
    job = client.post("/tasks/add", json={"args": [2, 3], "webhook_url": hook.url}).get_json()

    # When the job completes
    start_worker("--burst", "--simple", "--name", "hooked").wait()
    # (polled once before the delivery ends: the later poll must not get this answer again)
    assert client.get(f"/jobs/{job['job_id']}").get_json()["status"] == "COMPLETED"

    # Then the webhook arrives twice (a 500, then a 200), signed, with the job as JSON
    wait_until(lambda: len(hook.requests) == 2)
    payload = verify(hook.requests[1])
    assert payload["type"] == "job.completed"
    assert payload["data"]["job_id"] == job["job_id"]
    assert payload["data"]["result"] == 5
    assert hook.requests[0]["headers"]["webhook-id"] == hook.requests[1]["headers"]["webhook-id"]
    wait_until(lambda: client.get(f"/jobs/{job['job_id']}").get_json()["webhook_delivered"] is True)
    record = client.get(f"/jobs/{job['job_id']}/webhooks").get_json()
    assert record["webhook_delivered"] is True
    [delivery] = record["deliveries"]
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]
    app.extensions["webhooks_thread"].stop()


def test_a_webhook_that_keeps_failing_is_given_up_and_redirects_are_not_followed(hook_settings, receiver):
    hook = receiver([302, 302, 302, 302])
    app = start_background(create_app(hook_settings))
    client = app.test_client()
    job = client.post("/tasks/add", json={"args": [1, 1], "webhook_url": hook.url}).get_json()

    client.post(f"/jobs/{job['job_id']}/cancel", json={})

    wait_until(lambda: client.get(f"/jobs/{job['job_id']}").get_json()["webhook_delivered"] is False)
    assert len(hook.requests) == 3
    assert verify(hook.requests[0])["type"] == "job.cancelled"
    attempts = client.get(f"/jobs/{job['job_id']}/webhooks").get_json()["deliveries"][0]["attempts"]
    assert [a["status_code"] for a in attempts] == [302, 302, 302]
    app.extensions["webhooks_thread"].stop()


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "http://user:pw@8.8.8.8/hook",
        "not a url",
    ],
)
def test_a_private_or_odd_webhook_url_is_refused_with_422_and_nothing_is_recorded(settings, url):
    client = create_app(settings).test_client()  # loopback not allowed
    response = client.post("/tasks/add", json={"args": [1, 1], "webhook_url": url})
    assert response.status_code == 422
    assert "webhook_url" in response.get_json()["error"]["message"]
    assert client.get("/jobs").get_json()["jobs"] == []


def test_the_guard_is_applied_again_at_send_time(hook_settings, receiver):
    # Given a job whose webhook host later resolves to a private address (DNS rebinding)
    hook = receiver()
    app = start_background(create_app(hook_settings))
    client = app.test_client()
    app.extensions["webhooks_thread"].stop()
    job = client.post("/tasks/add", json={"args": [1, 1], "webhook_url": hook.url}).get_json()
    client.post(f"/jobs/{job['job_id']}/cancel", json={})
    dispatcher = services(app).webhooks
    dispatcher.allow_loopback = False

    dispatcher.run_once()
    dispatcher.wait_idle()

    assert hook.requests == []
    [delivery] = client.get(f"/jobs/{job['job_id']}/webhooks").get_json()["deliveries"]
    assert delivery["status"] == "failed"
    assert delivery["attempts"][0]["error"].startswith("refused")


def test_the_guard_checks_every_address_a_name_resolves_to():
    def resolve(host, port, proto):
        return [(2, 1, 6, "", ("93.184.216.34", port)), (2, 1, 6, "", ("10.1.1.1", port))]

    with pytest.raises(ValidationFailed, match="private"):
        check_webhook_url("https://example.com/hook", allow_loopback=False, resolve=resolve)
