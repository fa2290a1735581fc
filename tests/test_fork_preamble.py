"""A forking worker builds each work-horse's preamble before the fork, and the horse runs on it.

Issue 17 (T4, forking worker): every object a freshly forked work-horse builds is written into pages
it shares with its parent, each copied on write. The run's own preamble (its reporter started
afresh, what it holds of the task's outcome, the task's job context and the log capture's handler)
is built by the parent just before the fork, as the horse's Redis connection already is
(``backend/runner/horse_redis.py``): the horse takes them as its own. These tests pin that the
horse builds none of it itself, and that a run on the parent's preamble is the run it was: its
progress, output events, captured log lines and result all reach the store.

Run as a program (``python tests/test_fork_preamble.py --burst ...``), this file is the worker,
noting in ``PREAMBLE_NOTES`` which process built each piece.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _noting_worker() -> int:
    """backend/worker.py, with each preamble piece's maker noted (by process id) in a file."""
    from backend.runner import reporting, task_io
    from backend.runner.reporter import Reporter
    from backend.runner.worker import main

    notes = os.environ["PREAMBLE_NOTES"]

    def note(what: str, **extra) -> None:
        with open(notes, "a") as out:
            out.write(json.dumps({"what": what, "pid": os.getpid(), **extra}) + "\n")

    def noted(owner, name: str, what: str):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            note(what)
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)

    noted(Reporter, "reset", "reset")
    noted(task_io.RunServices, "context", "context")
    noted(task_io, "_Capture", "capture handler")
    perform_job = reporting.ReportingMixin.perform_job

    def performing(self, job, queue, execution):
        note("perform", horse=self.is_horse)
        return perform_job(self, job, queue, execution)

    reporting.ReportingMixin.perform_job = performing
    return main()


if __name__ == "__main__":  # the worker (nothing of the tests' own imported into it)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(_noting_worker())

import pytest  # noqa: E402

from backend.broker.events import EventLog  # noqa: E402
from tests.helpers import submit, wait_for_status  # noqa: E402

pytestmark = pytest.mark.one_pass(reason="the worker runtime; the store's side of its reports is tested on both stores")


def _logs(client, job_id: str) -> list[str]:
    response = client.get(f"/jobs/{job_id}/logs")
    assert response.status_code == 200, response.get_json()
    return [line["message"] for line in response.get_json()["lines"]]


def test_a_work_horse_builds_no_preamble_of_its_own_and_its_run_reports_all_it_did(
    client, start_worker, tmp_path, redis_conn
):
    # Given jobs that use every channel of the context (progress, output, logging, job.log)
    text = "One two three. Four five six seven. Eight."
    summaries = [submit(client, "summarise_stream", kwargs={"text": text, "delay": 0})["job_id"] for _ in range(3)]
    whoami = submit(client, "whoami")["job_id"]

    # When a forking worker drains them, noting who built what
    notes_path = tmp_path / "notes.jsonl"
    worker = start_worker("--burst", "--name", "preamble", env={"PREAMBLE_NOTES": str(notes_path)}, program=(__file__,))
    assert worker.wait() == 0, worker.output()
    notes = [json.loads(line) for line in notes_path.read_text().splitlines()]

    # Then each job ran in a work-horse of its own, and no horse started a reporter afresh, built
    # a job context or a capture handler: the worker process did, before the forks
    parent = worker.process.pid
    horses = {note["pid"] for note in notes if note["what"] == "perform"}
    assert len(horses) == 4 and parent not in horses
    assert all(note["horse"] for note in notes if note["what"] == "perform")
    built = [note for note in notes if note["what"] in ("reset", "context", "capture handler")]
    assert {note["pid"] for note in built} == {parent}
    assert [note["what"] for note in built].count("context") == 4
    assert [note["what"] for note in built].count("capture handler") == 1

    # And every run reported all it did, through the preamble the parent built for it
    assert wait_for_status(client, whoami, {"COMPLETED"})["result"]["pid"] in horses
    for job_id in summaries:
        job = wait_for_status(client, job_id, {"COMPLETED"})
        assert job["result"] == {"summary": "One two three. Four five six seven.", "words": 7}
        assert (job["progress"], job["progress_message"]) == (100, "7 of 7 words")
        assert _logs(client, job_id) == ["summarising 3 sentences into 2", "summary of 7 words ready"]
        kinds = [event.kind for event in EventLog(redis_conn).history(job_id, after=None, limit=500)]
        assert kinds.count("output") == 7 and "log" in kinds
