"""Operator commands: ``python -m backend <command>``, also ``flask --app "backend.app:create_app()" <command>``.

recover                                   one reconciler pass
cleanup [--dry-run] [--older-than MIN] [--force]
clear-queues [--flush-db] [--yes]
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from redis.exceptions import RedisError

from backend.core import logs
from backend.recovery import maintenance


class CommandError(click.ClickException):
    """A command's failure, printed with every credential masked: messages land in terminals,
    CI logs and bug reports, and an exception's text may quote a URL with its password."""

    def format_message(self) -> str:
        return logs.redact(self.message)


def _app_parts():
    return current_app.extensions["jobs"], current_app.extensions["reconciler"]


def _require_redis() -> None:
    manager, _ = _app_parts()
    try:
        manager.queues.connection.ping()
    except RedisError as exc:
        url = current_app.config.get("REDIS_URL")
        raise CommandError(f"Redis is unreachable at {url} ({exc}); start it or set REDIS_URL") from None


@click.command("recover")
@with_appcontext
def recover_command() -> None:
    """Run one reconciler pass: settle every difference between the store and Redis."""
    _require_redis()
    _, reconciler = _app_parts()
    # Two passes: a worker counts as dead only once its lease was seen missing for a while.
    reconciler.run_once()
    time.sleep(reconciler.dead_after)
    report = reconciler.run_once()
    if report is None:
        click.echo("another reconciler is running; nothing done")
        return
    click.echo(json.dumps(report.as_dict(), indent=2))


@click.command("cleanup")
@click.option("--dry-run", is_flag=True, help="show what would be done; change nothing")
@click.option("--older-than", type=click.IntRange(min=0), default=60, show_default=True, metavar="MIN",
              help="only jobs unchanged for this many minutes")  # fmt: skip
@click.option("--force", is_flag=True, help="end every live job older than the cut-off, held or not")
@with_appcontext
def cleanup_command(dry_run: bool, older_than: int, force: bool) -> None:
    """End stuck jobs in the store and in Redis' registries."""
    _require_redis()
    manager, reconciler = _app_parts()
    try:
        report = maintenance.cleanup(
            manager, reconciler, older_than=timedelta(minutes=older_than), force=force, dry_run=dry_run
        )
    except RedisError as exc:
        raise CommandError(f"Redis failed during cleanup ({exc}); run it again when Redis is back") from None
    verb = "would end" if dry_run else "ended"
    for job_id, status, reason in report.jobs:
        click.echo(f"store: {verb} {job_id} ({status}): {reason}")
    verb = "would remove" if dry_run else "removed"
    for queue, where, rq_id, reason in report.redis:
        click.echo(f"redis: {verb} {rq_id} from {queue} {where}: {reason}")
    click.echo(
        f"{'dry run: ' if dry_run else ''}{len(report.jobs)} stuck job(s) in the store, "
        f"{len(report.redis)} Redis entr{'y' if len(report.redis) == 1 else 'ies'}"
    )


@click.command("clear-queues")
@click.option("--flush-db", is_flag=True, help="flush the whole Redis database, not only the queues")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@with_appcontext
def clear_queues_command(flush_db: bool, yes: bool) -> None:
    """Empty the high, default and low queues, cancelling their jobs in the store."""
    _require_redis()
    manager, _ = _app_parts()
    what = "FLUSH the whole Redis database" if flush_db else "empty the high, default and low queues"
    if not yes:
        click.confirm(f"This will {what} and cancel their jobs in the store. Go on?", abort=True)
    try:
        result = maintenance.clear_queues(manager, flush_db=flush_db, by="clear-queues")
    except RedisError as exc:
        raise CommandError(f"Redis failed while clearing ({exc})") from None
    click.echo(json.dumps(result, indent=2))


COMMANDS = (recover_command, cleanup_command, clear_queues_command)


def register(app: Flask) -> None:
    for command in COMMANDS:
        app.cli.add_command(command)


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Job service maintenance commands."""
    from backend.app import create_app
    from backend.core.secrets_check import InsecureSecrets

    # One pass of work, not a server: no background reconciler or webhook dispatcher, and
    # only errors logged unless LOG_LEVEL says otherwise.
    overrides: dict[str, object] = {"RECONCILE_INTERVAL": 0, "WEBHOOK_INTERVAL": 0}
    if not os.environ.get("LOG_LEVEL"):
        overrides["LOG_LEVEL"] = "ERROR"
    try:
        app = create_app(overrides, role="cli")
    except InsecureSecrets as exc:
        raise CommandError(str(exc)) from None
    ctx.obj = app
    ctx.with_resource(app.app_context())


for _command in COMMANDS:
    main.add_command(_command)
