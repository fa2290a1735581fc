"""The task registry: ``@task("name")`` on a top-level function makes it runnable by name.

Requests only ever name a task; the function's import path comes from this registry,
never from a request.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from backend.core.errors import NotFound, ValidationFailed
from backend.core.long_tasks import LOG_LEVELS
from backend.core.rate_spec import parse_rate

#: The longest rate key a submission may name (a tenant chooses it: it names Redis keys).
MAX_RATE_KEY = 200
#: Characters a rate key may not hold: an operator could not name it in PUT /rate-limits/<key>.
_BAD_KEY = re.compile(r"[\x00-\x1f\x7f]")
#: Tasks whose recorded jobs' rate keys no longer validated (warned once each: the log stays short).
_WARNED: set[str] = set()

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    func: Callable
    path: str
    concurrency: int | None = None
    #: The lowest level of the ``logging`` records captured into the job's log while it runs.
    log_level: str = "INFO"
    #: At most this many starts per window for each rate key (canonical text, e.g. "60/minute").
    rate_limit: str | None = None
    #: The keyword argument whose value is the rate key; None: the task's name is the key.
    rate_key: str | None = None

    @functools.cached_property
    def signature(self) -> inspect.Signature:
        # Once per task: every submission binds its arguments to it (inspect took ~40 µs a time).
        return inspect.signature(self.func)

    def describe(self) -> dict:
        """The task as ``GET /tasks`` shows it: its name, doc and parameters."""
        params = []
        for param in self.signature.parameters.values():
            entry = {"name": param.name, "kind": param.kind.name.lower(), "required": False}
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                entry["required"] = param.default is param.empty
            if param.default is not param.empty:
                entry["default"] = param.default
            if param.annotation is not param.empty:
                annotation = param.annotation
                entry["type"] = (
                    annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
                )
            params.append(entry)
        doc = inspect.getdoc(self.func)
        return {
            "name": self.name,
            "description": doc.splitlines()[0] if doc else None,
            "parameters": params,
            "concurrency": self.concurrency,
            "rate_limit": self.rate_limit,
            "rate_key": self.rate_key,
        }

    def rate_for(self, args: list, kwargs: dict) -> tuple[str, str] | None:
        """(rate key, limit text) for a job of these arguments, or None when the task has no limit.

        The key is the value the task's ``rate_key`` parameter gets, whether it is passed by name,
        by position or left to its default (a caller passing it positionally must not land in
        another bucket than one naming it); the task's name when that value is None.

        Only a str or an int (as its decimal text) is a key: 1, 1.0 and true would be one account
        to the task but three keys, so floats and booleans are refused.

        Raises:
            ValidationFailed: the argument is not a str or int, its text is empty or longer than
                ``MAX_RATE_KEY``, holds a control character or begins with "/" (an operator could
                not override it), or names a task whose key is its own name (its budget).
        """
        if self.rate_limit is None:
            return None
        value = None
        if self.rate_key is not None:
            value = kwargs.get(self.rate_key)
            try:
                bound = self.signature.bind(*args, **kwargs)
            except TypeError:
                bound = None  # refused by check_arguments; a recorded job's arguments bind
            if bound is not None:
                bound.apply_defaults()
                value = bound.arguments.get(self.rate_key, value)
        if value is None:
            return self.name, self.rate_limit
        return self._checked_key(value), self.rate_limit

    def _checked_key(self, value: object) -> str:
        """The rate key text of ``value``, or ValidationFailed saying what is wrong with it."""
        key = None
        if isinstance(value, str):
            key = value
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**MAX_RATE_KEY:
            key = str(value)
        fault = None
        if key is None or not 0 < len(key) <= MAX_RATE_KEY:
            fault = f"a string or an integer (not a float or boolean) of 1..{MAX_RATE_KEY} characters"
        elif _BAD_KEY.search(key) or key.startswith("/") or "//" in key:
            # Every key must be one PUT /rate-limits/<key> can name (no redirect, no merged slashes).
            fault = 'a text without control characters that does not begin with "/" or hold "//"'
        elif key != self.name and _keyed_by_name(key):
            fault = f"not the name of task {key!r}, whose own limit is kept under its name"
        if fault is not None:
            raise ValidationFailed(
                f"argument {self.rate_key!r} of task {self.name!r} is its rate key: {fault}",
                details={"task": self.name, "rate_key": self.rate_key},
            )
        return key

    def recorded_rate(self, args: list, kwargs: dict) -> tuple[str, str] | None:
        """``rate_for`` for a job already recorded (its next attempt, a requeue): a value that no
        longer makes a key (a deploy added the rate_key) takes the task's name as its key, still
        limited, so the job is never stuck unsent; a warning says so once per task."""
        try:
            return self.rate_for(args, kwargs)
        except ValidationFailed as exc:
            if self.name not in _WARNED:
                _WARNED.add(self.name)
                log.warning(
                    "task %s: a recorded job's rate key is unusable (%s); its key is the task's name", self.name, exc
                )
            return self.name, self.rate_limit

    def check_arguments(self, args: list, kwargs: dict) -> None:
        """Raise ValidationFailed, naming the fault, unless the task accepts these arguments."""
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ValidationFailed(
                f"bad arguments for task {self.name!r}: {exc}",
                details={"task": self.name, "parameters": self.describe()["parameters"]},
            ) from None
        self.rate_for(args, kwargs)


_REGISTRY: dict[str, TaskSpec] = {}
#: The same specs by their function's import path (what a worker's RQ job names).
_BY_PATH: dict[str, TaskSpec] = {}


def task(
    name: str,
    *,
    concurrency: int | None = None,
    log_level: str = "INFO",
    rate_limit: str | None = None,
    rate_key: str | None = None,
) -> Callable[[Callable], Callable]:
    """Register a top-level function as the task ``name``.

    ``log_level``: records of this level and above that the task logs through ``logging`` while
    it runs (and its ``current_job().log()`` lines) are kept in the job's log.

    ``rate_limit`` ("60/minute", "10/5s": backend/core/rate_spec.py): at most that many of its
    jobs start in any such window per rate key, across all workers; ``rate_key`` names the keyword
    argument whose value is the key (the task's name when absent or not given).

    Raises:
        TypeError: the function is not importable by its module path (nested, lambda), or
            another function already holds the name.
    """

    def register(func: Callable) -> Callable:
        if "<" in func.__qualname__ or "." in func.__qualname__:
            raise TypeError(f"a task must be a top-level function, got {func.__qualname__!r}")
        if concurrency is not None and concurrency < 1:
            raise TypeError(f"concurrency must be at least 1, got {concurrency!r}")
        if not isinstance(log_level, str) or log_level.upper() not in LOG_LEVELS:
            raise TypeError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
        limit = _rate_limit(name, func, rate_limit, rate_key)
        path = f"{func.__module__}.{func.__qualname__}"
        existing = _REGISTRY.get(name)
        if existing is not None and existing.path != path:
            raise TypeError(f"task name {name!r} is already taken by {existing.path}")
        spec = TaskSpec(
            name=name,
            func=func,
            path=path,
            concurrency=concurrency,
            log_level=log_level.upper(),
            rate_limit=limit,
            rate_key=rate_key,
        )
        _REGISTRY[name] = _BY_PATH[path] = spec
        return func

    return register


def _rate_limit(name: str, func: Callable, rate_limit: str | None, rate_key: str | None) -> str | None:
    """The canonical limit text of a declaration, checked at import so a bad one never runs."""
    if rate_limit is None:
        if rate_key is not None:
            raise TypeError(f"task {name!r}: rate_key={rate_key!r} needs a rate_limit")
        return None
    try:
        limit = parse_rate(rate_limit).text
    except ValueError as exc:
        raise TypeError(f"task {name!r}: bad rate_limit: {exc}") from None
    if rate_key is not None:
        params = inspect.signature(func).parameters
        takes_any = any(param.kind is param.VAR_KEYWORD for param in params.values())
        if not isinstance(rate_key, str) or not (rate_key in params or takes_any):
            raise TypeError(f"task {name!r}: rate_key={rate_key!r} names none of its keyword arguments")
    return limit


def _keyed_by_name(key: str) -> bool:
    """Whether ``key`` names a rate-limited task keyed by its own name (no rate_key)."""
    spec = _REGISTRY.get(key)
    return spec is not None and spec.rate_limit is not None and spec.rate_key is None


def get_task(name: str) -> TaskSpec:
    """Return the registered task ``name``.

    Raises:
        NotFound: no task has that name.
    """
    spec = _REGISTRY.get(name)
    if spec is None:
        raise NotFound(f"no task named {name!r}", details={"tasks": sorted(_REGISTRY)})
    return spec


def task_for_path(path: str) -> TaskSpec | None:
    """The registered task whose function is at ``path`` (``module.function``), or None."""
    return _BY_PATH.get(path)


def all_tasks() -> list[TaskSpec]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def load_task_modules(spec: str) -> None:
    """Import the comma-separated modules of ``TASK_MODULES`` so their tasks register."""
    for module in (part.strip() for part in spec.split(",")):
        if module:
            importlib.import_module(module)
