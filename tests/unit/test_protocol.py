"""The report protocol on its own: what a worker encodes, the API decodes to the same report."""

from __future__ import annotations

import pytest

from backend.core import protocol
from backend.core.errors import BadRequest
from backend.core.size_caps import SizeCaps


def test_what_the_worker_encodes_the_api_decodes_to_the_same_reports():
    # Given one report of each event, queued at t=100..103 and sent at t=110
    encoded = [
        protocol.started("job_1", 1, "w1"),
        protocol.progress("job_1", 1, 50, "half"),
        protocol.completed("job_1", 1, {"sum": 3}),
        protocol.failed("job_2", 2, "ValueError: no"),
    ]
    for at, report in enumerate(encoded, start=100):
        report["at"] = float(at)

    # When the API decodes the batch body
    batch = protocol.decode_batch(protocol.batch_body(encoded, sent_at=110.0), SizeCaps())

    # Then each report keeps its fields, and its age is the worker's own clock difference
    assert batch.refused == {} and batch.size == 4
    assert batch.reports == [
        protocol.Report("job_1", 1, "started", 10.0, worker="w1"),
        protocol.Report("job_1", 1, "progress", 9.0, progress=50, message="half"),
        protocol.Report("job_1", 1, "completed", 8.0, result={"sum": 3}),
        protocol.Report("job_2", 2, "failed", 7.0, error="ValueError: no"),
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


@pytest.mark.parametrize(
    ("body", "fault"),
    [
        ({"reports": "x"}, "at most 1000"),
        ({"reports": [{"job_id": "j", "attempt": 1, "event": "started", "worker": "w"}] * 1001}, "at most 1000"),
        ({"reports": [{"job_id": "j", "attempt": 1, "event": "exploded"}]}, "reports[0].event"),
        ({"reports": [{"job_id": "j", "attempt": True, "event": "started", "worker": "w"}]}, "reports[0].attempt"),
        ({"reports": [{"job_id": "j", "attempt": 1, "event": "started", "colour": "red"}]}, "reports[0].colour"),
        ({"sent_at": -5, "reports": []}, "sent_at"),
    ],
)
def test_a_malformed_batch_is_refused_naming_the_fault(body, fault):
    with pytest.raises(BadRequest) as refused:
        protocol.decode_batch(body, SizeCaps())
    assert fault in refused.value.message


def test_paths_and_header_are_the_ones_the_api_serves():
    assert protocol.BATCH_PATH == "/internal/reports"
    assert protocol.one_report_path("job_1", protocol.PROGRESS) == "/internal/jobs/job_1/progress"
    assert protocol.TOKEN_HEADER == "X-Internal-Token"
