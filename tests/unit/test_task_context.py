"""The task API on its own: Snooze, the context's checks outside a worker, and a run's log capture
(caps, levels, whose records) with a reporter and an event log that only record what they get."""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from backend.core.long_tasks import (
    MAX_LOG_BYTES_PER_JOB,
    MAX_LOG_LINE_BYTES,
    MAX_LOG_LINES_PER_JOB,
    MAX_OUTPUT_BYTES,
    MAX_SNOOZE_SECONDS,
)
from backend.core.protocol import LogLine
from backend.core.size_caps import text_size
from backend.runner.task_io import REPORT_BYTES, EventSender, RunLog, capturing, level_name, report_chunks
from backend.tasks import JobContext, Snooze, current_job, task


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0,), ValueError),
        ((-1,), ValueError),
        ((MAX_SNOOZE_SECONDS + 1,), ValueError),
        ((math.nan,), ValueError),
        ((True,), TypeError),
        (("30",), TypeError),
        ((30, 7), TypeError),
    ],
)
def test_a_snooze_out_of_bounds_is_refused_where_it_is_raised(args, error):
    with pytest.raises(error):
        Snooze(*args)


def test_a_snooze_keeps_its_seconds_and_reason():
    snooze = Snooze(30, "rate limited")
    assert (snooze.seconds, snooze.reason, str(snooze)) == (30.0, "rate limited", "snooze 30 s: rate limited")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        (5, 5.0),
        (2.5, 2.5),
        ("0", Snooze.MIN_RETRY_AFTER),
        ("99999999999", MAX_SNOOZE_SECONDS),
        (None, 60.0),
        ("soon", 60.0),
        ("-5", 60.0),
        (format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True), Snooze.MIN_RETRY_AFTER),
    ],
)
def test_a_retry_after_header_becomes_a_snooze_of_that_long(value, seconds):
    snooze = Snooze.from_retry_after(value)
    assert (snooze.seconds, snooze.reason) == (seconds, "rate limited")


def test_a_retry_after_http_date_snoozes_until_that_time():
    when = datetime.now(UTC) + timedelta(seconds=90)
    snooze = Snooze.from_retry_after(format_datetime(when, usegmt=True), reason="429", default=5)
    assert 88 <= snooze.seconds <= 90 and snooze.reason == "429"


def test_outside_a_worker_the_calls_are_checked_then_dropped():
    job = current_job()
    job.emit({"token": "hi"})
    job.log("a line", level="debug")
    job.checkpoint({"next": 3})
    assert job.checkpoint_state is None
    with pytest.raises(ValueError, match="MAX_OUTPUT_BYTES"):
        job.emit("x" * MAX_OUTPUT_BYTES)
    with pytest.raises(TypeError, match="not JSON"):
        job.emit(object())
    with pytest.raises(ValueError, match="not JSON"):
        job.emit(math.inf)
    with pytest.raises(ValueError, match="MAX_CHECKPOINT_BYTES"):
        job.checkpoint({"blob": "x" * (64 * 1024)})
    with pytest.raises(ValueError, match="level must be one of"):
        job.log("a line", level="LOUD")
    with pytest.raises(TypeError):
        job.log(42)


def _never_registered() -> None:
    """A top-level function: only its level can be refused."""


def test_a_task_log_level_must_be_a_logging_level():
    with pytest.raises(TypeError, match="log_level"):
        task("bad_level_task", log_level="CHATTY")(_never_registered)


class _IO:
    """A run's channels that record the calls (the API's checkpoint store is one value)."""

    def __init__(self, saved=None):
        self.saved, self.calls = saved, []

    def emit(self, data_json):
        self.calls.append(("emit", data_json))

    def log(self, level, message, at):
        self.calls.append(("log", level, message))

    def load_checkpoint(self):
        self.calls.append(("load",))
        return self.saved

    def save_checkpoint(self, state):
        self.calls.append(("save", state))
        self.saved = state


def test_the_checkpoint_state_is_the_earlier_attempts_read_once_and_before_the_first_save():
    io = _IO(saved={"next": 6})
    job = JobContext(job_id="j", attempt=2, _io=io)

    job.checkpoint({"next": 7})
    job.checkpoint({"next": 8})

    assert job.checkpoint_state == {"next": 6}
    assert io.calls == [("load",), ("save", {"next": 7}), ("save", {"next": 8})]
    job.emit([1, "é"])
    assert io.calls[-1] == ("emit", '[1,"é"]')


class _Reporter:
    def __init__(self):
        self.reports = []

    def log_lines(self, job_id, attempt, lines):
        self.reports.append(list(lines))


class _Events:
    def __init__(self):
        self.appended = []

    def append(self, job_id, kind, data_json):
        self.appended.append((kind, data_json))

    def append_many(self, job_id, events):
        self.appended.extend(events)


def _run_log():
    reporter, events = _Reporter(), _Events()
    return RunLog("j", 1, reporter, events), reporter, events


def test_a_run_sends_the_per_job_line_cap_and_the_first_line_past_it_in_reports_of_200():
    run_log, reporter, events = _run_log()
    for index in range(MAX_LOG_LINES_PER_JOB + 5):
        run_log.add(1.0, "INFO", f"line {index}")
    run_log.close()

    # The line past the cap is the store's cue for its "[log cut: ...]" marker
    assert [len(report) for report in reporter.reports] == [200] * 5 + [1]
    assert reporter.reports[-1][-1].message == f"line {MAX_LOG_LINES_PER_JOB}"
    assert len(events.appended) == MAX_LOG_LINES_PER_JOB + 1 and run_log.dropped == 4


def test_a_run_stops_at_the_byte_cap_and_cuts_long_lines():
    run_log, reporter, _ = _run_log()
    for _ in range(MAX_LOG_BYTES_PER_JOB // MAX_LOG_LINE_BYTES + 3):
        run_log.add(1.0, "INFO", "é" * MAX_LOG_LINE_BYTES)  # 2 bytes a character: cut to the line cap
    run_log.add(1.0, "INFO", "short")  # nothing more once a cap was reached
    run_log.close()

    sent = [line for report in reporter.reports for line in report]
    assert len(sent) == MAX_LOG_BYTES_PER_JOB // MAX_LOG_LINE_BYTES + 1  # the last one past the cap
    assert all(text_size(line.message) <= MAX_LOG_LINE_BYTES and line.message.endswith("…") for line in sent)
    assert sum(text_size(line.message) for line in sent[:-1]) <= MAX_LOG_BYTES_PER_JOB and run_log.dropped == 3


def test_capture_keeps_the_tasks_records_of_its_level_not_the_runtimes():
    run_log, reporter, _ = _run_log()
    root = logging.getLogger()
    before = root.level
    with capturing(run_log, logging.DEBUG):
        logging.getLogger("tests.task").debug("debug %s", "kept")
        logging.getLogger("rq.worker").warning("runtime, not kept")
        logging.getLogger("backend.runner.reporter").error("runtime, not kept")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("tests.task").exception("it failed")
    logging.getLogger("tests.task").warning("after the run, not kept")
    run_log.close()

    lines = [(line.level, line.message.splitlines()[0]) for report in reporter.reports for line in report]
    assert lines == [("DEBUG", "debug kept"), ("ERROR", "it failed")]
    assert "ValueError: boom" in reporter.reports[0][1].message
    assert root.level == before


def test_a_custom_level_counts_as_the_standard_one_below():
    assert [level_name(n) for n in (5, 10, 25, 35, 45, 60)] == [
        "DEBUG",
        "DEBUG",
        "INFO",
        "WARNING",
        "ERROR",
        "CRITICAL",
    ]


def test_events_are_best_effort_a_redis_that_refuses_is_warned_once_per_job(caplog):
    # A Redis nobody listens on: every append fails at once (connection refused)
    sender = EventSender(Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0)))

    with caplog.at_level(logging.WARNING, logger="backend.runner.task_io"):
        for _ in range(3):
            sender.append("job_1", "output", '{"data":1,"attempt":1}')

    warnings = [record.getMessage() for record in caplog.records if record.name == "backend.runner.task_io"]
    assert len(warnings) == 1 and warnings[0].startswith("job job_1: output event not sent")


def test_log_reports_stay_small_as_json_whatever_the_lines_hold():
    plain = [LogLine(1.0, "INFO", "x") for _ in range(450)]
    controls = [LogLine(1.0, "INFO", "\x01" * MAX_LOG_LINE_BYTES) for _ in range(64)]  # 6 bytes each as JSON

    assert [len(chunk) for chunk in report_chunks(plain)] == [200, 200, 50]
    chunks = report_chunks(controls)
    assert sum(len(chunk) for chunk in chunks) == 64 and len(chunks) > 1
    assert all(len(json.dumps([line.message for line in chunk])) <= REPORT_BYTES for chunk in chunks)
