"""Write tasks with ``@task`` and reach their job with ``current_job()``; ``raise Snooze(...)`` to run later."""

from backend.tasks.context import CheckpointUnavailable, JobCancelled, JobContext, Snooze, current_job
from backend.tasks.registry import TaskSpec, all_tasks, get_task, load_task_modules, task, task_for_path

__all__ = [
    "CheckpointUnavailable",
    "JobCancelled",
    "JobContext",
    "Snooze",
    "TaskSpec",
    "all_tasks",
    "current_job",
    "get_task",
    "load_task_modules",
    "task",
    "task_for_path",
]
