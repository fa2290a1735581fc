"""A log line is the service's: what a tenant's task puts in an error message cannot forge a
record of its own in the text log (a fake CRITICAL line, terminal escape sequences)."""

from __future__ import annotations

import re

from tests.helpers import wait_for_status

# What a record of the text format starts with: "2026-11-29 12:00:00,123 LEVEL logger: ..."
RECORD_START = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
FORGED = (
    "boom\n2026-11-29 12:00:00,000 CRITICAL backend.runner.worker: FAKE LINE all jobs deleted \x1b[31m"
    "\r2026-11-29 12:00:01,000 CRITICAL backend.runner.worker: FAKE CR LINE\x85\u2028next"
)


def test_a_tasks_error_message_cannot_forge_a_worker_log_line(client, run_burst_worker):
    # Given a job of the fail task whose message carries a whole fake log record, a carriage
    # return, terminal colour escapes and other control characters
    answer = client.post("/tasks/fail", json={"args": [FORGED], "max_retries": 0})
    assert answer.status_code == 202, answer.get_json()
    job = answer.get_json()

    # When a real worker (text log format, the default) runs it
    worker = run_burst_worker()
    assert wait_for_status(client, job["job_id"], {"FAILED"})["status"] == "FAILED"

    # Then the worker's log shows the message, but no line of it looks like a record of its
    # own, and no raw escape or carriage return reaches the terminal
    raw = worker.log_path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    assert "FAKE LINE" in text, text
    assert b"\x1b" not in raw and b"\r" not in raw
    assert "\x85" not in text and "\u2028" not in text
    forged = [line for line in text.split("\n") if "FAKE" in line and RECORD_START.match(line)]
    assert forged == [], forged
    assert "\\x1b[31m" in text  # escaped, still readable
