"""Example tasks that make the service demonstrable from curl."""

from __future__ import annotations

import re
import time
from collections import Counter

from backend.tasks import current_job, task


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
