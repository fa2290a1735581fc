"""``python -m jobservice_client``: the job service from a terminal, for people and for scripts.

    python -m jobservice_client submit sleep --kwargs '{"seconds": 5}' --wait
    python -m jobservice_client jobs list --status FAILED --kwarg document_id=7
    python -m jobservice_client jobs logs <id> --follow

Settings: ``JOBSERVICE_URL`` (default http://127.0.0.1:5000) and ``JOBSERVICE_API_KEY``, or
``--url`` / ``--api-key`` before the command. Exit codes: 0 the job COMPLETED (or the command
did what it said), 1 it FAILED, 2 it was CANCELLED or the command line was wrong, 3 the service
refused the request or could not be reached, 130 interrupted (the job goes on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from jobservice_client import output
from jobservice_client.client import DEFAULT_URL, Client
from jobservice_client.errors import JobServiceError

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED, EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 2, 3, 130
#: The exit code of a job's end (a live job, with --follow cut short, is 0).
EXIT_BY_STATUS = {"COMPLETED": EXIT_OK, "FAILED": EXIT_FAILED, "CANCELLED": EXIT_CANCELLED}
#: How often ``jobs logs --follow`` asks for new lines.
FOLLOW_INTERVAL = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # a usage error exits 2 here
    if not getattr(args, "run", None):
        (getattr(args, "usage", None) or parser).print_help(sys.stderr)
        return EXIT_USAGE
    client = Client(args.url, args.api_key or None)
    try:
        return args.run(client, args)
    except JobServiceError as exc:
        output.error(exc, args.url)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted; the job goes on (jobs show ID to see it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        client.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobservice_client",
        description="Start jobs, follow them with a progress bar, list, inspect and cancel them.",
        epilog="Exit codes: 0 COMPLETED (or done), 1 FAILED, 2 CANCELLED or a usage error, "
        "3 the service refused or could not be reached, 130 interrupted.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("JOBSERVICE_URL") or DEFAULT_URL,
        help="the API's address (JOBSERVICE_URL; default %(default)s)",
    )
    parser.add_argument("--api-key", default=os.environ.get("JOBSERVICE_API_KEY"), help="API key (JOBSERVICE_API_KEY)")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts (no progress bar)")

    submit = commands.add_parser("submit", parents=[common], help="start a job (--wait: follow it to its end)")
    submit.add_argument("task", help="the task's name (GET /tasks lists them)")
    submit.add_argument("--args", type=_json_list, help="positional arguments, a JSON list: '[1, 2]'")
    submit.add_argument("--kwargs", type=_json_object, help="keyword arguments, a JSON object: '{\"seconds\": 5}'")
    submit.add_argument("--priority", choices=("high", "default", "low"))
    submit.add_argument("--idempotency-key", help="the same key returns the live job instead of a second one")
    submit.add_argument("--run-at", help="start no earlier than this ISO 8601 time")
    submit.add_argument("--max-retries", type=int, help="runs after a failure (the task raised)")
    submit.add_argument("--timeout", type=int, help="seconds one run may take")
    submit.add_argument("--webhook-url", help="POSTed the job when it ends")
    submit.add_argument("--wait", action="store_true", help="show its progress live, then its result")
    submit.set_defaults(run=run_submit)

    jobs_parser = commands.add_parser("jobs", help="list, show, cancel, follow jobs")
    jobs_parser.set_defaults(usage=jobs_parser)  # `jobs` alone: its own help
    jobs = jobs_parser.add_subparsers(title="jobs commands", metavar="ACTION")
    listing = jobs.add_parser("list", parents=[common], help="jobs newest first, filtered")
    listing.add_argument("--status", type=str.upper, help="QUEUED, PROCESSING, COMPLETED, FAILED, ...")
    listing.add_argument("--task")
    listing.add_argument(
        "--kwarg", action="append", type=_pair, default=[], metavar="NAME=VALUE", help="a keyword argument's value"
    )
    listing.add_argument("--q", help="text in the task name, error or progress message")
    listing.add_argument("--owner", help="whose jobs (admin keys)")
    listing.add_argument("--created-after", help="ISO 8601 time")
    listing.add_argument("--created-before", help="ISO 8601 time")
    listing.add_argument("--batch-id")
    listing.add_argument("--schedule-id")
    listing.add_argument("--limit", type=_positive, default=20, help="at most this many (default %(default)s)")
    listing.set_defaults(run=run_list)

    show = jobs.add_parser("show", parents=[common], help="one job, whole")
    show.add_argument("job_id", metavar="ID")
    show.set_defaults(run=run_show)
    wait = jobs.add_parser("wait", parents=[common], help="follow a job to its end, as submit --wait")
    wait.add_argument("job_id", metavar="ID")
    wait.set_defaults(run=run_wait)
    cancel = jobs.add_parser("cancel", parents=[common], help="cancel a live job")
    cancel.add_argument("job_id", metavar="ID")
    cancel.set_defaults(run=run_cancel)
    logs = jobs.add_parser("logs", parents=[common], help="the lines a job's task logged")
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument("--follow", "-f", action="store_true", help="print new lines as they come, until the job ends")
    logs.set_defaults(run=run_logs)
    return parser


# -- commands --------------------------------------------------------------------------------


def run_submit(client: Client, args) -> int:
    options = {
        "priority": args.priority,
        "idempotency_key": args.idempotency_key,
        "run_at": args.run_at,
        "max_retries": args.max_retries,
        "timeout": args.timeout,
        "webhook_url": args.webhook_url,
    }
    job = client.submit(args.task, args=args.args, kwargs=args.kwargs, **options)
    if not args.wait:
        output.job_line(job, args.json, verb="started" if job.created else "already running")
        return EXIT_OK
    return _follow(job, args.json)


def run_wait(client: Client, args) -> int:
    return _follow(client.job(args.job_id), args.json)


def _follow(job, as_json: bool) -> int:
    if as_json:
        job.wait()
    else:
        with output.ProgressBar(job) as bar:
            job.wait(on_progress=bar.update)
    output.ended(job, as_json)
    return EXIT_BY_STATUS.get(job.status, EXIT_OK)


def run_list(client: Client, args) -> int:
    filters = {
        name: getattr(args, name)
        for name in ("owner", "q", "created_after", "created_before", "batch_id", "schedule_id")
        if getattr(args, name) is not None
    }
    jobs = list(
        client.jobs(
            status=args.status,
            task=args.task,
            kwargs=dict(args.kwarg),
            page_size=min(args.limit, 100),
            limit=args.limit,
            **filters,
        )
    )
    output.job_table(jobs, args.json)
    return EXIT_OK


def run_show(client: Client, args) -> int:
    output.job_detail(client.job(args.job_id), args.json)
    return EXIT_OK


def run_cancel(client: Client, args) -> int:
    output.job_line(client.cancel(args.job_id), args.json, verb="cancelled")
    return EXIT_OK


def run_logs(client: Client, args) -> int:
    """The job's lines; with --follow, new ones every half second until the job has ended and
    its last lines are in (the worker sends a run's lines before it reports its end)."""
    after = 0
    while True:
        ended = client.job(args.job_id) if args.follow else None
        lines = client.logs(args.job_id, after=after)
        for line in lines:
            output.log_line(line, args.json)
        if lines:
            after = lines[-1]["seq"]
        if not args.follow:
            return EXIT_OK
        if ended.done:
            return EXIT_BY_STATUS[ended.status]
        sys.stdout.flush()
        time.sleep(FOLLOW_INTERVAL)


# -- argument types (a bad value: argparse's usage error, exit 2) ----------------------------


def _json_value(text: str):
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text[:80]!r}") from None


def _no_constant(name: str):
    """NaN and Infinity: Python's json reads them, JSON has none, and the API could not take them."""
    raise ValueError(f"{name} is not JSON")


def _json_object(text: str) -> dict:
    value = _json_value(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"seconds\": 5}}', got {text[:80]!r}")
    return value


def _json_list(text: str) -> list:
    value = _json_value(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"must be a JSON list such as '[1, 2]', got {text[:80]!r}")
    return value


def _pair(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"must be NAME=VALUE, got {text[:80]!r}")
    return name, value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text[:40]!r}")
    return value
