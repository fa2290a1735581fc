"""The state machine on its own: ``states.decide`` over every pair of statuses, every attempt case.

The expected answers are written from the rule the module states (within an attempt a job only
moves forward: PENDING -> QUEUED -> PROCESSING -> an end), not read back from its table.
"""

from __future__ import annotations

import itertools

import pytest

from backend.core.errors import InvalidTransition, StaleAttempt
from backend.core.states import (
    AUTO_RETRY_FROM,
    LIVE,
    LIVE_VALUES,
    MANUAL_RETRY_FROM,
    REQUEUE_FROM,
    TERMINAL,
    TERMINAL_VALUES,
    JobStatus,
    Verdict,
    decide,
)

STATUSES = [status.value for status in JobStatus]
PAIRS = list(itertools.product(STATUSES, STATUSES))
ENDS = {"COMPLETED", "FAILED", "CANCELLED"}
RANK = {"PENDING": 0, "QUEUED": 1, "PROCESSING": 2, "COMPLETED": 3, "FAILED": 3, "CANCELLED": 3}


def forward(current: str, target: str) -> bool:
    return current not in ENDS and RANK[target] > RANK[current]


def test_the_value_sets_split_the_statuses_into_live_and_ended():
    assert TERMINAL_VALUES == ENDS
    assert {"PENDING", "QUEUED", "PROCESSING"} == LIVE_VALUES
    assert all(type(value) is str for value in TERMINAL_VALUES | LIVE_VALUES)
    assert {status.value for status in TERMINAL} == TERMINAL_VALUES
    assert {status.value for status in LIVE} == LIVE_VALUES


@pytest.mark.parametrize(("current", "target"), PAIRS)
def test_within_the_attempt_a_job_only_moves_forward(current, target):
    # Given a job on attempt 1, when its own attempt (or the API) asks for a move
    moves = [decide(current, 1, target, 1), decide(current, 1, target)]

    # Then forward applies, the same status is a no-op, anything else is refused
    expected = Verdict.APPLY if forward(current, target) else Verdict.SAME if current == target else Verdict.REFUSED
    for move in moves:
        assert move.verdict is expected
        assert (move.current, move.target, move.attempt, move.next_attempt) == (current, target, 1, 1)
        assert move.applies is (expected is Verdict.APPLY)
        assert move.refused is (expected is Verdict.REFUSED)


@pytest.mark.parametrize(("current", "target"), [pair for pair in PAIRS if not forward(*pair) and pair[0] != pair[1]])
def test_a_refused_move_says_why_in_both_callers_words(current, target):
    move = decide(current, 1, target, 1)

    assert move.refusal() == f"cannot move from {current} to {target}"
    error = move.error("job_x")
    assert isinstance(error, InvalidTransition) and error.status == 409
    assert error.message == f"job job_x cannot move from {current} to {target}"
    assert error.details == {"job_id": "job_x", "status": current, "requested": target}


@pytest.mark.parametrize(("current", "target"), PAIRS)
def test_tolerate_behind_leaves_a_job_at_or_past_the_target_as_it_is(current, target):
    move = decide(current, 1, target, 1, tolerate_behind=True)

    expected = Verdict.APPLY if forward(current, target) else Verdict.SAME if current == target else Verdict.BEHIND
    assert move.verdict is expected
    assert not move.refused


@pytest.mark.parametrize("status", STATUSES)
def test_strict_refuses_a_move_to_where_the_job_already_is(status):
    assert decide(status, 1, status, 1, strict=True).verdict is Verdict.REFUSED
    assert decide(status, 1, status, 1, strict=True, tolerate_behind=True).verdict is Verdict.BEHIND
    assert isinstance(decide(status, 1, status, 1, strict=True).error("j"), InvalidTransition)


@pytest.mark.parametrize(("current", "target"), PAIRS)
@pytest.mark.parametrize(("job_attempt", "reported"), [(1, 2), (3, 1)], ids=["ahead", "behind"])
def test_a_move_for_another_attempt_is_stale_whatever_the_statuses(current, target, job_attempt, reported):
    for options in [{}, {"tolerate_behind": True}, {"strict": True}, {"new_attempt_from": AUTO_RETRY_FROM}]:
        move = decide(current, job_attempt, target, reported, **options)

        assert move.verdict is Verdict.STALE, options
        assert move.refused and not move.applies
        assert move.next_attempt == job_attempt
        assert move.refusal() == f"attempt {reported} is not the job's current attempt {job_attempt}"
        error = move.error("job_x")
        assert isinstance(error, StaleAttempt) and error.status == 409
        assert error.message == f"job job_x is on attempt {job_attempt}, got a report for attempt {reported}"


@pytest.mark.parametrize("allowed", [AUTO_RETRY_FROM, REQUEUE_FROM, MANUAL_RETRY_FROM])
@pytest.mark.parametrize("current", STATUSES)
def test_a_new_attempt_starts_only_from_the_statuses_allowed(allowed, current):
    move = decide(current, 2, "PENDING", 2, new_attempt_from=allowed)

    if current in {status.value for status in allowed}:
        assert move.verdict is Verdict.APPLY and move.new_attempt
        assert move.next_attempt == 3
    else:
        assert move.verdict is Verdict.REFUSED and move.next_attempt == 2
        assert move.error("j").message == f"job j cannot move from {current} to PENDING: cannot start a new attempt"


def test_the_retry_sets_are_the_documented_ones():
    assert {s.value for s in AUTO_RETRY_FROM} == {"PENDING", "QUEUED", "PROCESSING"}
    assert {s.value for s in REQUEUE_FROM} == {"PENDING", "QUEUED"}
    assert {s.value for s in MANUAL_RETRY_FROM} == {"FAILED", "CANCELLED"}


@pytest.mark.parametrize("current", STATUSES)
def test_progress_writes_within_a_live_attempt_and_never_after_its_end(current):
    # A progress report moves no status: target None
    move = decide(current, 1, None, 1)

    if current in ENDS:
        assert move.verdict is Verdict.REFUSED
        assert move.refusal() == f"job has ended ({current})"
        error = move.error("j")
        assert isinstance(error, InvalidTransition)
        assert error.message == f"job j cannot move from {current} to PROCESSING: job has ended"
    else:
        assert move.verdict is Verdict.APPLY and move.target is None


@pytest.mark.parametrize(("current", "target"), PAIRS)
def test_a_job_status_and_its_value_decide_alike_and_moves_hold_plain_strings(current, target):
    by_enum = decide(JobStatus(current), 1, JobStatus(target), 1)
    by_value = decide(current, 1, target, 1)

    assert by_enum == by_value
    assert type(by_enum.current) is str and type(by_enum.target) is str
    assert type(decide(JobStatus(current), 1, JobStatus(target), 1, tolerate_behind=True).current) is str
