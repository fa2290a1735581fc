"""Tasks of the long-task tests (issue 14): output, logs, snooze and checkpoints, run by real workers."""

from __future__ import annotations

import logging
import threading
import time

from backend.tasks import Snooze, current_job, task

log = logging.getLogger("tests.long_tasks")


@task("chatty")
def chatty(words: list) -> int:
    """Emit each word, report progress, and log through ``logging`` and ``current_job().log``."""
    job = current_job()
    log.debug("a debug line, under the task's level")
    for index, word in enumerate(words, start=1):
        job.emit({"word": word})
        job.progress(index * 100 // len(words), f"word {index} of {len(words)}")
    log.info("said %d words", len(words))
    job.log("by hand", level="warning")
    # The worker runtime's own loggers are never a job's lines.
    logging.getLogger("rq.worker").warning("not a line of the job")
    return len(words)


@task("chatty_debug", log_level="DEBUG")
def chatty_debug() -> None:
    """Log at DEBUG and INFO; its level keeps both."""
    log.debug("a debug line")
    current_job().log("a debug line by hand", level="DEBUG")
    log.info("an info line")


@task("snooze_once")
def snooze_once(seconds: float = 1.0, reason: str = "the provider said 429", repeat: int = 1) -> int:
    """Snooze on the first attempt (``reason`` ``repeat`` times: a provider's whole error body);
    return the attempt that ran to the end."""
    job = current_job()
    if job.attempt == 1:
        raise Snooze(seconds, reason * repeat)
    return job.attempt


@task("log_then_work")
def log_then_work(lines: int = 1000, pause: float = 0.55) -> int:
    """Log ``lines`` lines at once, then work ``pause`` seconds: the run log's flush timer (0.5 s)
    is sending them when the task returns."""
    for number in range(lines):
        log.info("line %d", number)
    time.sleep(pause)
    return lines


@task("leave_a_logging_thread")
def leave_a_logging_thread(secret: str, delay: float = 0.5) -> None:
    """Return at once, leaving a thread that logs ``secret`` ``delay`` seconds later (as an SDK's
    background thread or a retry timer would)."""

    def later():
        time.sleep(delay)
        log.warning("left behind by an earlier job: %s", secret)

    threading.Thread(target=later, daemon=True).start()


@task("count_with_checkpoints")
def count_with_checkpoints(to: int = 10, fail_at: int = 6) -> dict:
    """Count to ``to`` saving a checkpoint at each step; the first attempt fails at ``fail_at``."""
    job = current_job()
    state = job.checkpoint_state
    start = state["next"] if state else 0
    ran = []
    for step in range(start, to):
        if job.attempt == 1 and step == fail_at:
            raise RuntimeError(f"failing at step {step}")
        ran.append(step)
        job.checkpoint({"next": step + 1})
    return {"ran": ran, "resumed_from": state, "attempt": job.attempt}


@task("checkpoint_until_cancelled")
def checkpoint_until_cancelled(delay: float = 0.05, steps: int = 1200) -> int:
    """Save a checkpoint every ``delay`` seconds, ``steps`` times (a minute by default)."""
    job = current_job()
    for step in range(steps):
        job.checkpoint({"step": step})
        time.sleep(delay)
    return steps
