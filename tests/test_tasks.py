"""The task registry: top-level functions by name, arguments checked against the signature."""

from __future__ import annotations

import pytest

from backend.core.errors import NotFound, ValidationFailed
from backend.tasks import current_job, get_task, task


def test_a_nested_function_cannot_be_a_task():
    with pytest.raises(TypeError, match="top-level"):

        @task("nested")
        def nested():
            pass


def test_a_name_cannot_be_taken_twice():
    with pytest.raises(TypeError, match="already taken"):
        task("echo")(_other)


def _other():
    pass


def test_unknown_task_is_not_found():
    with pytest.raises(NotFound):
        get_task("os.system")


def test_arguments_are_checked_against_the_signature():
    spec = get_task("word_count")
    spec.check_arguments([], {"text": "a b"})
    with pytest.raises(ValidationFailed, match="'text'"):
        spec.check_arguments([], {})


def test_current_job_outside_a_worker_is_detached():
    job = current_job()
    assert job.job_id is None
    job.progress(50)  # dropped, no error
    with pytest.raises(ValueError, match="0-100"):
        job.progress(101)
