"""The work-horse's handover file (backend/runner/handover.py): only this run's own end is read."""

from __future__ import annotations

import json
import os

from backend.core import protocol
from backend.runner.handover import Handover


def _written(handover: Handover, payload) -> None:
    os.pwrite(handover._file.fileno(), json.dumps(payload).encode(), 0)


def test_the_end_a_horse_wrote_for_this_run_is_taken_once():
    handover = Handover()
    handover.arm("job_a-1")
    end = protocol.completed("job_a", 1, {"n": 1})
    assert handover.write("job_a-1", end)
    assert handover.take() == end
    assert handover.take() is None  # read once: a second wait for the same horse finds nothing
    handover.close()


def test_nothing_written_another_runs_end_or_garbage_is_no_handover():
    handover = Handover()
    handover.arm("job_a-1")
    assert handover.take() is None  # the horse handed nothing over
    handover.arm("job_a-1")
    assert not handover.write("job_b-1", protocol.completed("job_b", 1, None))  # not this run
    assert handover.take() is None
    for payload in (
        [1, 2],  # JSON, but not a handover
        {"token": "guessed", "rq_id": "job_a-1", "report": protocol.completed("job_a", 1, None)},
        {"rq_id": "job_a-1", "report": protocol.completed("job_a", 1, None)},
    ):
        handover.arm("job_a-1")
        _written(handover, payload)
        assert handover.take() is None, payload
    handover.arm("job_a-1")
    os.pwrite(handover._file.fileno(), b'{"token": "cut sho', 0)  # a horse killed mid-write
    assert handover.take() is None
    handover.close()


def test_a_start_or_progress_is_no_end_to_hand_over():
    handover = Handover()
    handover.arm("job_a-1")
    _written(handover, {"token": handover._token, "rq_id": "job_a-1", "report": protocol.started("job_a", 1, "w")})
    assert handover.take() is None
    handover.close()


def test_a_temp_dir_that_refuses_the_file_leaves_the_run_without_a_handover(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    handover = Handover()
    monkeypatch.setattr("backend.runner.handover.tempfile.TemporaryFile", refuse)
    handover.arm("job_a-1")  # no exception: the job still runs
    assert not handover.write("job_a-1", protocol.completed("job_a", 1, None))
    assert handover.take() is None
