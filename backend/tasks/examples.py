"""Example tasks that make the service demonstrable from curl (and show the task API: progress,
checkpoints, Snooze, emitted output and captured logs)."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter

import requests

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


@task("fetch_url")
def fetch_url(url: str, timeout: float = 10.0) -> dict:
    """GET ``url``; a 429 answer snoozes the job for its Retry-After (no failure counted).

    Only http(s) URLs; the body is not returned, only its status, type and size.
    """
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
    response = requests.get(url, timeout=timeout)
    if response.status_code == 429:
        raise Snooze.from_retry_after(response.headers.get("Retry-After"), reason=f"{url} answered 429")
    log.info("GET %s: %d, %d bytes", url, response.status_code, len(response.content))
    response.raise_for_status()
    return {"status": response.status_code, "content_type": response.headers.get("Content-Type"),
            "bytes": len(response.content)}  # fmt: skip


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
