"""Write tasks with ``@task`` and reach their job with ``current_job()``."""

from backend.tasks.context import JobContext, current_job
from backend.tasks.registry import TaskSpec, all_tasks, get_task, load_task_modules, task

__all__ = ["JobContext", "TaskSpec", "all_tasks", "current_job", "get_task", "load_task_modules", "task"]
