"""Operator commands: ``python -m backend <command>``, also ``flask --app "backend.app:create_app()" <command>``.

migrate                                   bring the store to the newest schema
copy-store --from URL --to URL            copy the whole store into an empty database, counts verified
recover                                   one reconciler pass
cleanup [--dry-run] [--older-than MIN] [--force]
clear-queues [--flush-db] [--yes]
pause QUEUE / resume QUEUE                stop / restart the starts of a queue's jobs (recorded in the store)
prune [--dry-run] [--older-than 30d] [--status COMPLETED]   delete finished jobs past their retention

``python -m backend`` builds the service objects alone: no Flask app, no background thread.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from datetime import timedelta

import click
from flask import Flask

from backend.broker.errors import BrokerError
from backend.core import logs
from backend.core.durations import parse_duration
from backend.core.errors import ServiceUnavailable
from backend.core.secrets_check import InsecureSecrets
from backend.core.secrets_check import enforce as enforce_secrets
from backend.core.settings import QUEUE_NAMES, SettingError, Settings
from backend.recovery import maintenance
from backend.service.retention import Retention, policy_from_settings
from backend.services import Services, build_services
from backend.store.copy import CopyError, copy_store
from backend.store.engine import make_engine, make_session_factory, migrate
from backend.store.errors import StoreUnavailable
from backend.store.vacuum import vacuum


class CommandError(click.ClickException):
    """A command's failure, printed with every credential masked: messages land in terminals,
    CI logs and bug reports, and an exception's text may quote a URL with its password."""

    def format_message(self) -> str:
        return logs.redact(self.message)


def _services() -> Services:
    """The services ``main`` built, or under ``flask --app ...`` those of the app Flask loaded."""
    ctx = click.get_current_context()
    services = ctx.find_object(Services)
    if services is None:
        from flask.cli import ScriptInfo

        from backend.api.context import services as app_services

        services = app_services(ctx.ensure_object(ScriptInfo).load_app())
    return services


def _require_redis(services: Services) -> None:
    try:
        services.redis.ping()
    except BrokerError as exc:
        url = services.settings.redis_url
        raise CommandError(f"Redis is unreachable at {url} ({exc}); start it or set REDIS_URL") from None


@click.command("migrate")
def migrate_command() -> None:
    """Bring the job store to the newest schema (any number of processes at once take turns)."""
    ctx = click.get_current_context()
    settings = ctx.find_object(Settings)
    if settings is None:
        settings = _services().settings
    try:
        migrate(settings.database_url, connect_timeout=settings.db_connect_timeout)
    except Exception as exc:  # the database's or Alembic's error: one line, credentials masked
        raise CommandError(f"migration failed ({type(exc).__name__}: {exc})") from None
    click.echo("job store at schema head")


@click.command("copy-store")
@click.option(
    "--from", "source", required=True, metavar="URL", help="the store to copy (e.g. sqlite:///backend/data/jobs.db)"
)
@click.option("--to", "target", required=True, metavar="URL", help="an empty database (migrated to head first)")
def copy_store_command(source: str, target: str) -> None:
    """Copy every table of the job store into an empty database and verify the row counts."""
    try:
        total = copy_store(source, target, on_table=lambda name, count: click.echo(f"{name}: {count}"))
    except CopyError as exc:
        raise CommandError(f"copy-store refused or failed: {exc}") from None
    except Exception as exc:  # the database's error: one line, credentials masked
        raise CommandError(f"copy-store failed ({type(exc).__name__}: {exc})") from None
    click.echo(f"copied {total} rows, counts verified")


@click.command("recover")
def recover_command() -> None:
    """Run one reconciler pass: settle every difference between the store and Redis."""
    services = _services()
    _require_redis(services)
    reconciler = services.reconciler
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
def cleanup_command(dry_run: bool, older_than: int, force: bool) -> None:
    """End stuck jobs in the store and in Redis' registries."""
    services = _services()
    _require_redis(services)
    try:
        report = maintenance.cleanup(
            services.jobs,
            services.reconciler,
            services.sessions,
            services.queues,
            older_than=timedelta(minutes=older_than),
            force=force,
            dry_run=dry_run,
        )
    except BrokerError as exc:
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
def clear_queues_command(flush_db: bool, yes: bool) -> None:
    """Empty the high, default and low queues, cancelling their jobs in the store."""
    services = _services()
    _require_redis(services)
    what = "FLUSH the whole Redis database" if flush_db else "empty the high, default and low queues"
    if not yes:
        click.confirm(f"This will {what} and cancel their jobs in the store. Go on?", abort=True)
    try:
        result = maintenance.clear_queues(services.jobs, services.queues, flush_db=flush_db, by="clear-queues")
    except BrokerError as exc:
        raise CommandError(f"Redis failed while clearing ({exc})") from None
    click.echo(json.dumps(result, indent=2))


def _who() -> str:
    """Who paused, as the record shows it: the command line, by user and host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"[:200]


def _pause_line(outcome) -> str:
    if not outcome.paused:
        return f"queue {outcome.queue} {'resumed' if outcome.changed else 'was not paused'}"
    since = outcome.paused_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    if outcome.changed:
        return f"queue {outcome.queue} paused (since {since}, by {outcome.paused_by})"
    return f"queue {outcome.queue} was already paused (since {since}, by {outcome.paused_by})"


@click.command("pause")
@click.argument("queue", type=click.Choice(QUEUE_NAMES))
def pause_command(queue: str) -> None:
    """Pause QUEUE: workers start none of its jobs (running ones finish) until it is resumed."""
    try:
        outcome = _services().pauses.pause(queue, by=_who())
    except ServiceUnavailable as exc:
        raise CommandError(exc.message) from None
    click.echo(_pause_line(outcome))


@click.command("resume")
@click.argument("queue", type=click.Choice(QUEUE_NAMES))
def resume_command(queue: str) -> None:
    """Resume QUEUE: workers start its jobs again within seconds."""
    try:
        outcome = _services().pauses.resume(queue, by=_who())
    except ServiceUnavailable as exc:
        raise CommandError(exc.message) from None
    click.echo(_pause_line(outcome))


_END_STATUSES = ("COMPLETED", "FAILED", "CANCELLED")


def _prune_statuses(given: tuple[str, ...]) -> tuple[str, ...]:
    """--status values (repeated, or comma lists), checked; every end status when none is given."""
    named = [part.strip().upper() for value in given for part in value.split(",") if part.strip()]
    unknown = [name for name in named if name not in _END_STATUSES]
    if given and not named:  # `--status ""` (a script's empty variable) names nothing: not "all"
        raise click.BadParameter("names no status: use COMPLETED, FAILED or CANCELLED", param_hint="--status")
    if unknown:
        raise click.BadParameter(f"{unknown[0]!r}: use COMPLETED, FAILED or CANCELLED", param_hint="--status")
    return tuple(dict.fromkeys(named)) or _END_STATUSES


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="count the jobs that would go; delete nothing")
@click.option("--older-than", metavar="DURATION",
              help="jobs ended longer ago than this (30d, 12h, 15m, 90s) instead of RETENTION_*")  # fmt: skip
@click.option("--status", "statuses", multiple=True, metavar="STATUS",
              help="COMPLETED, FAILED or CANCELLED (repeat it, or a comma list); default: all three")  # fmt: skip
def prune_command(dry_run: bool, older_than: str | None, statuses: tuple[str, ...]) -> None:
    """Delete finished jobs past their retention, with their attempts, logs and webhook deliveries."""
    wanted = _prune_statuses(statuses)
    seconds = None
    if older_than is not None:
        try:
            seconds = parse_duration(older_than)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
        if seconds is None:
            raise click.BadParameter("must be above 0 (30d, 12h, ...)", param_hint="--older-than")
    settings = click.get_current_context().find_object(Settings)
    if settings is None:  # under flask --app: the app's services
        services = _services()
        settings, sessions = services.settings, services.sessions
    else:
        if settings.migrate_on_start:
            try:
                migrate(settings.database_url, connect_timeout=settings.db_connect_timeout)
            except Exception as exc:  # the store down, or Alembic's error: one line, credentials masked
                raise CommandError(f"the store is unavailable ({type(exc).__name__}: {exc}); nothing pruned") from None
        sessions = make_session_factory(make_engine(settings.database_url, connect_timeout=settings.db_connect_timeout))
    retention = Retention(sessions, policy_from_settings(settings), batch=settings.prune_batch)
    try:
        done = retention.prune(wanted, seconds, dry_run=dry_run)
    except StoreUnavailable as exc:
        raise CommandError(f"the store is unavailable ({type(exc).__name__}: {exc}); nothing more pruned") from None
    for status in wanted:
        setting = f"RETENTION_{status}"
        if status not in done:
            click.echo(f"{status}: kept for ever ({setting}=0)")
            continue
        age = older_than if older_than is not None else getattr(settings, setting.lower())
        verb = "would be pruned" if dry_run else "pruned"
        click.echo(f"{status}: {done[status]} job{'' if done[status] == 1 else 's'} {verb} (older than {age})")


@click.command("vacuum")
def vacuum_command() -> None:
    """Compact a SQLite store and rebuild its q index (use it, not a bare VACUUM); PostgreSQL: not needed."""
    settings = click.get_current_context().find_object(Settings)
    url = settings.database_url if settings is not None else _services().settings.database_url
    engine = make_engine(url, connect_timeout=settings.db_connect_timeout if settings else 5)
    try:
        ran = vacuum(engine)
    except StoreUnavailable as exc:
        raise CommandError(f"the store is unavailable ({type(exc).__name__}: {exc}); not vacuumed") from None
    finally:
        engine.dispose()
    if ran:
        click.echo("vacuumed; the q index (jobs_fts) rebuilt")
    else:
        click.echo("PostgreSQL: not needed (autovacuum reclaims space); nothing done")


COMMANDS = (
    migrate_command,
    copy_store_command,
    recover_command,
    cleanup_command,
    clear_queues_command,
    pause_command,
    resume_command,
    prune_command,
    vacuum_command,
)


def register(app: Flask) -> None:
    """Add the commands to ``app``'s ``flask`` command line."""
    for command in COMMANDS:
        app.cli.add_command(command)


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Job service maintenance commands."""
    # One pass of work, not a server: only errors logged unless LOG_LEVEL says otherwise.
    try:
        settings = Settings.load({} if os.environ.get("LOG_LEVEL") else {"LOG_LEVEL": "ERROR"})
    except SettingError as exc:  # one line naming the setting, not a traceback
        raise CommandError(f"bad setting: {exc}") from None
    logs.configure(fmt=settings.log_format, level=settings.log_level, settings=settings.as_config())
    try:
        enforce_secrets(settings, role="cli")
    except (InsecureSecrets, SettingError) as exc:
        raise CommandError(str(exc)) from None
    if ctx.invoked_subcommand in ("migrate", "copy-store", "prune", "vacuum"):
        # Needs the store alone: no Redis, and no migration at start that would race its own
        # (copy-store takes its databases from its options, not DATABASE_URL; prune opens the store).
        ctx.obj = settings
        return
    ctx.obj = build_services(settings)


for _command in COMMANDS:
    main.add_command(_command)
