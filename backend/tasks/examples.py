"""Example tasks that make the service demonstrable from curl (and show the task API: progress,
checkpoints, Snooze, emitted output and captured logs)."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter

from backend.tasks import Snooze, current_job, task

log = logging.getLogger(__name__)


@task("echo")
def echo(*args, **kwargs) -> dict:
    """Return the arguments it was given."""
    return {"args": list(args), "kwargs": kwargs}


@task("sleep")
def sleep(seconds: float = 1.0, steps: int = 10) -> dict:
    """Sleep for ``seconds``, reporting progress ``steps`` times on the way."""
    if seconds < 0 or steps < 1:
        raise ValueError(f"seconds must be >= 0 and steps >= 1, got {seconds!r} and {steps!r}")
    job = current_job()
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        job.progress(step * 100 // steps, f"step {step} of {steps}")
    return {"slept": seconds}


@task("fail")
def fail(message: str = "this task always fails") -> None:
    """Raise RuntimeError with ``message``."""
    raise RuntimeError(message)


@task("word_count")
def word_count(text: str, top: int = 10) -> dict:
    """Count the words of ``text``; return the total and the ``top`` most common."""
    words = re.findall(r"[\w']+", text.lower())
    return {"words": len(words), "unique": len(set(words)), "top": Counter(words).most_common(top)}


@task("count_to")
def count_to(to: int = 10, delay: float = 0.5, snooze_at: int | None = None, snooze_seconds: float = 2.0) -> dict:
    """Count to ``to``, one step every ``delay`` seconds, saving a checkpoint after each step.

    A later attempt (after a crash, a kill, a retry or a snooze) resumes after the last saved
    step instead of from zero. With ``snooze_at``, the first attempt to reach that step snoozes
    for ``snooze_seconds`` (``raise Snooze``: no failure counted) and the next one goes on.
    """
    if to < 1 or delay < 0:
        raise ValueError(f"to must be >= 1 and delay >= 0, got {to!r} and {delay!r}")
    job = current_job()
    state = job.checkpoint_state or {"done": 0, "snoozed": False}
    start = state["done"]
    if start:
        log.info("resuming after step %d (attempt %d)", start, job.attempt)
    for step in range(start + 1, to + 1):
        if step == snooze_at and not state["snoozed"]:
            state = {"done": step - 1, "snoozed": True}
            job.checkpoint(state)
            raise Snooze(snooze_seconds, f"pausing before step {step}")
        time.sleep(delay)
        state = {"done": step, "snoozed": state["snoozed"]}
        job.checkpoint(state)
        job.progress(step * 100 // to, f"step {step} of {to}")
    return {"counted_to": to, "resumed_after": start, "attempt": job.attempt}


#: The simulated provider's limits: an example any API key may run must not let it make the
#: worker snooze for long or often (every snooze is an attempt row and events).
PROVIDER_MAX_BUSY_ATTEMPTS = 3
PROVIDER_MAX_RETRY_AFTER = 30
PROVIDER_MAX_PROMPT = 4096


def _simulated_provider(prompt: str, attempt: int, busy_attempts: int, retry_after: int) -> tuple[int, dict, str]:
    """A rate-limited model API, in-process: (status, headers, body) as an HTTP client would see.

    In-process so that the example reaches no network at all: a task that fetched a URL a client
    chose would let any API key make the worker GET internal addresses (SECURITY.md).
    """
    if attempt <= busy_attempts:
        return 429, {"Retry-After": str(retry_after)}, "rate limited"
    return 200, {"Content-Type": "text/plain"}, f"(simulated) {len(prompt.split())} words received"


@task("call_provider")
def call_provider(prompt: str, busy_attempts: int = 1, retry_after: int = 2) -> dict:
    """Ask a rate-limited model API (simulated in-process) about ``prompt``: its 429 snoozes the
    job for exactly its Retry-After (no failure counted), and the next attempt asks again.

    The provider answers 429 with ``Retry-After: retry_after`` to the first ``busy_attempts``
    attempts. A real task calls its provider at a URL the operator configures, never one a client
    sends, and reads a bounded body without following redirects.
    """
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > PROVIDER_MAX_PROMPT:
        raise ValueError(f"prompt must be a non-empty string of at most {PROVIDER_MAX_PROMPT} characters")
    if not 0 <= busy_attempts <= PROVIDER_MAX_BUSY_ATTEMPTS or not 1 <= retry_after <= PROVIDER_MAX_RETRY_AFTER:
        raise ValueError(
            f"busy_attempts must be 0..{PROVIDER_MAX_BUSY_ATTEMPTS} and retry_after 1..{PROVIDER_MAX_RETRY_AFTER}, "
            f"got {busy_attempts!r} and {retry_after!r}"
        )
    job = current_job()
    status, headers, body = _simulated_provider(prompt, job.attempt, busy_attempts, retry_after)
    if status == 429:
        reason = f"provider answered 429 (Retry-After: {headers.get('Retry-After')})"
        raise Snooze.from_retry_after(headers.get("Retry-After"), reason=reason)
    log.info("provider answered %d on attempt %d", status, job.attempt)
    return {"status": status, "answer": body, "attempt": job.attempt}


@task("call_limited_provider", rate_limit="60/minute", rate_key="provider")
def call_limited_provider(prompt: str, provider: str = "example") -> dict:
    """Call an upstream provider (simulated in-process) at most 60 times a minute per ``provider``,
    across all workers: a job over the limit waits (``waiting_reason: "rate_limit"``), holding no
    worker, and starts when a slot frees."""
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > PROVIDER_MAX_PROMPT:
        raise ValueError(f"prompt must be a non-empty string of at most {PROVIDER_MAX_PROMPT} characters")
    return {"provider": provider, "answer": f"(simulated) {len(prompt.split())} words received"}


@task("summarise_stream")
def summarise_stream(text: str, sentences: int = 2, delay: float = 0.05) -> dict:
    """An LLM-style task: "summarise" ``text`` (its ``sentences`` longest sentences, in order),
    emitting the summary word by word as ``output`` events, logging as it goes."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    if sentences < 1 or delay < 0:
        raise ValueError(f"sentences must be >= 1 and delay >= 0, got {sentences!r} and {delay!r}")
    job = current_job()
    found = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    log.info("summarising %d sentences into %d", len(found), min(sentences, len(found)))
    longest = sorted(sorted(range(len(found)), key=lambda i: -len(found[i]))[:sentences])
    words = " ".join(found[i] for i in longest).split()
    for index, word in enumerate(words, start=1):
        time.sleep(delay)
        job.emit({"token": word if index == 1 else " " + word})
        job.progress(index * 100 // len(words), f"{index} of {len(words)} words")
    job.log(f"summary of {len(words)} words ready")
    return {"summary": " ".join(words), "words": len(words)}
