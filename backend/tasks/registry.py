"""The task registry: ``@task("name")`` on a top-level function makes it runnable by name.

Requests only ever name a task; the function's import path comes from this registry,
never from a request.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from backend.core.errors import NotFound, ValidationFailed
from backend.core.long_tasks import LOG_LEVELS


@dataclass(frozen=True)
class TaskSpec:
    name: str
    func: Callable
    path: str
    concurrency: int | None = None
    #: The lowest level of the ``logging`` records captured into the job's log while it runs.
    log_level: str = "INFO"

    @property
    def signature(self) -> inspect.Signature:
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
        }

    def check_arguments(self, args: list, kwargs: dict) -> None:
        """Raise ValidationFailed, naming the fault, unless the task accepts these arguments."""
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ValidationFailed(
                f"bad arguments for task {self.name!r}: {exc}",
                details={"task": self.name, "parameters": self.describe()["parameters"]},
            ) from None


_REGISTRY: dict[str, TaskSpec] = {}
#: The same specs by their function's import path (what a worker's RQ job names).
_BY_PATH: dict[str, TaskSpec] = {}


def task(name: str, *, concurrency: int | None = None, log_level: str = "INFO") -> Callable[[Callable], Callable]:
    """Register a top-level function as the task ``name``.

    ``log_level``: records of this level and above that the task logs through ``logging`` while
    it runs (and its ``current_job().log()`` lines) are kept in the job's log.

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
        path = f"{func.__module__}.{func.__qualname__}"
        existing = _REGISTRY.get(name)
        if existing is not None and existing.path != path:
            raise TypeError(f"task name {name!r} is already taken by {existing.path}")
        spec = TaskSpec(name=name, func=func, path=path, concurrency=concurrency, log_level=log_level.upper())
        _REGISTRY[name] = _BY_PATH[path] = spec
        return func

    return register


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
