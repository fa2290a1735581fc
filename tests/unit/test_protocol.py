"""The report protocol on its own: what a worker encodes, the API decodes to the same report."""

from __future__ import annotations

import pytest

from backend.core import protocol
from backend.core.errors import BadRequest
from backend.core.long_tasks import MAX_LOG_LINE_BYTES
from backend.core.size_caps import SizeCaps


def test_what_the_worker_encodes_the_api_decodes_to_the_same_reports():
    # Given one report of each event, queued at t=100..103 and sent at t=110
    encoded = [
        protocol.started("job_1", 1, "w1"),
        protocol.progress("job_1", 1, 50, "half"),
        protocol.completed("job_1", 1, {"sum": 3}),
        protocol.failed("job_2", 2, "ValueError: no"),
        protocol.snoozed("job_3", 1, 30, "rate limited"),
        protocol.log_lines("job_3", 1, [protocol.LogLine(99.5, "INFO", "fetched page 1")]),
    ]
    for at, report in enumerate(encoded, start=100):
        report["at"] = float(at)

    # When the API decodes the batch body
    batch = protocol.decode_batch(protocol.batch_body(encoded, sent_at=110.0), SizeCaps())

    # Then each report keeps its fields, and its age is the worker's own clock difference
    assert batch.refused == {} and batch.size == 6
    assert batch.reports == [
        protocol.Report("job_1", 1, "started", 10.0, worker="w1"),
        protocol.Report("job_1", 1, "progress", 9.0, progress=50, message="half"),
        protocol.Report("job_1", 1, "completed", 8.0, result={"sum": 3}),
        protocol.Report("job_2", 2, "failed", 7.0, error="ValueError: no"),
        protocol.Report("job_3", 1, "snoozed", 6.0, seconds=30.0, reason="rate limited"),
        protocol.Report("job_3", 1, "log", 5.0, lines=(protocol.LogLine(99.5, "INFO", "fetched page 1"),)),
    ]
    assert all(set(report) <= protocol.FIELDS for report in encoded)
    assert {report["event"] for report in encoded} == set(protocol.EVENTS)


def test_a_report_over_a_size_cap_gets_its_own_answer_in_its_place():
    caps = SizeCaps()
    too_long = "x" * (caps.error_bytes + 1)
    body = protocol.batch_body([protocol.started("j", 1, "w"), protocol.failed("j", 1, too_long)], sent_at=1.0)

    batch = protocol.decode_batch(body, caps)

    assert [report.event for report in batch.reports] == ["started"]
    assert list(batch.refused) == [1] and batch.refused[1]["status"] == 422
    assert batch.answers([{"status": 200}]) == [{"status": 200}, batch.refused[1]]
    assert protocol.batch_answer([], caps) == {"results": [], "limits": caps.as_settings()}


_LINE = {"at": 1.0, "level": "INFO", "message": "hello"}


def _log_report(**line) -> dict:
    return {"job_id": "j", "attempt": 1, "event": "log", "lines": [{**_LINE, **line}]}


@pytest.mark.parametrize(
    ("body", "fault"),
    [
        ({"reports": "x"}, "at most 1000"),
        ({"reports": [{"job_id": "j", "attempt": 1, "event": "started", "worker": "w"}] * 1001}, "at most 1000"),
        ({"reports": [{"job_id": "j", "attempt": 1, "event": "exploded"}]}, "reports[0].event"),
        ({"reports": [{"job_id": "j", "attempt": True, "event": "started", "worker": "w"}]}, "reports[0].attempt"),
        ({"reports": [{"job_id": "j", "attempt": 1, "event": "started", "colour": "red"}]}, "reports[0].colour"),
        ({"sent_at": -5, "reports": []}, "sent_at"),
        ({"reports": [{"job_id": "j", "attempt": 1, "event": "snoozed", "seconds": 0}]}, "reports[0].seconds"),
        ({"reports": [{"job_id": "j", "attempt": 1, "event": "snoozed", "seconds": 31 * 86400}]}, "at most"),
        ({"reports": [{"job_id": "j", "attempt": 1, "event": "snoozed"}]}, "reports[0].seconds"),
        ({"reports": [{"job_id": "j", "attempt": 1, "event": "log", "lines": []}]}, "1 to 200 lines"),
        ({"reports": [{"job_id": "j", "attempt": 1, "event": "log", "lines": [_LINE] * 201}]}, "1 to 200 lines"),
        ({"reports": [{"job_id": "j", "attempt": 1, "event": "log", "lines": ["hi"]}]}, "lines[0] must be"),
        ({"reports": [_log_report(level="LOUD")]}, "reports[0].lines[0].level"),
        ({"reports": [_log_report(at=None)]}, "reports[0].lines[0].at"),
        ({"reports": [_log_report(colour="red")]}, "lines[0].colour is not"),
        ({"reports": [_log_report(message=7)]}, "lines[0].message must be str"),
        # attempt: 1..999,999,999 for every event (a store's integer column holds no more)
        ({"reports": [{**_log_report(), "attempt": 10**30}]}, "reports[0].attempt must be an integer from 0"),
        ({"reports": [{**_log_report(), "attempt": -1}]}, "reports[0].attempt must be an integer from 0"),
        ({"reports": [{"job_id": "j", "attempt": -5, "event": "started", "worker": "w"}]}, "reports[0].attempt"),
        ({"reports": [{"job_id": "j", "attempt": 10**9, "event": "progress", "progress": 1}]}, "reports[0].attempt"),
        # a JSON integer too large for a float
        ({"reports": [{"job_id": "j", "attempt": 1, "event": "snoozed", "seconds": 10**400}]}, "reports[0].seconds"),
    ],
)
def test_a_malformed_batch_is_refused_naming_the_fault(body, fault):
    with pytest.raises(BadRequest) as refused:
        protocol.decode_batch(body, SizeCaps())
    assert fault in refused.value.message


def test_the_largest_attempt_is_999_999_999():
    body = protocol.batch_body([protocol.started("j", 999_999_999, "w")], sent_at=1.0)
    assert protocol.decode_batch(body, SizeCaps()).reports[0].attempt == 999_999_999


def test_paths_and_header_are_the_ones_the_api_serves():
    assert protocol.BATCH_PATH == "/internal/reports"
    assert protocol.one_report_path("job_1", protocol.PROGRESS) == "/internal/jobs/job_1/progress"
    assert protocol.TOKEN_HEADER == "X-Internal-Token"
    assert protocol.checkpoint_path("job_1") == "/internal/jobs/job_1/checkpoint"


def test_a_snooze_reason_or_log_line_over_its_cap_is_refused_on_its_own():
    caps = SizeCaps(progress_message=10)
    long_line = protocol.LogLine(1.0, "INFO", "x" * (MAX_LOG_LINE_BYTES + 1))
    body = protocol.batch_body(
        [
            protocol.snoozed("j", 1, 5, "r" * 11),
            protocol.log_lines("j", 1, [long_line]),
            protocol.snoozed("j", 1, 5.5, "r" * 10),
        ],
        sent_at=1.0,
    )

    batch = protocol.decode_batch(body, caps)

    assert sorted(batch.refused) == [0, 1]
    assert "snooze reason" in batch.refused[0]["error"] and "log line 0" in batch.refused[1]["error"]
    assert batch.reports == [protocol.Report("j", 1, "snoozed", seconds=5.5, reason="r" * 10)]


def test_snoozed_and_failed_end_an_attempt_log_and_progress_do_not():
    assert {"completed", "failed", "snoozed"} == protocol.ENDS


@pytest.mark.parametrize(
    ("record", "read"),
    [
        (protocol.snooze_record(30, "rate limited by the provider"), (30.0, "rate limited by the provider")),
        (protocol.snooze_record(0.5, "line one\nline two"), (0.5, "line one line two")),
        (protocol.snooze_record(2, ""), (2.0, "")),
        ("Traceback (most recent call last):\n  ...\nSnoozed: 30.0 x", None),
        ("Snoozed: 30.0 a\nValueError: b", None),
        ("Snoozed: soon", None),
        ("Snoozed: 0.0 never", None),
        ("Snoozed: 1e9 too long", None),
        (None, None),
    ],
)
def test_the_rq_record_of_a_snooze_reads_back_and_no_traceback_passes_for_one(record, read):
    assert protocol.recorded_snooze(record) == read
