"""The search queries of ``GET /jobs`` and the bulk actions: a ``JobFilter`` made into SQL that
an index answers, on SQLite and on PostgreSQL.

- task, status, owner, created_after/before: ranges of the ``(x, created_at, id)`` indexes of jobs.
- batch_id, schedule_id: ``ix_jobs_batch_created``, ``ix_jobs_schedule_created``.
- ``kwargs.<name>=<value>``: the ``job_kwargs`` rows written at submission; the first pair
  drives the query through ``ix_job_kwargs_lookup (name, value, created_at, job_id)`` (with an
  owner: ``ix_job_kwargs_owner_lookup``, owner first), newest first, the other pairs are primary-key probes.
- ``q``: SQLite an FTS5 trigram table over the jobs with an error or a progress message
  (``jobs_fts``, kept by triggers: migrations 0013 and 0015), and the task names that hold q (from
  a loose index scan of ``ix_jobs_task_created``: a handful of names, each then walked along it); PostgreSQL a
  pg_trgm GIN index on the lowered text (``ix_jobs_search_trgm``, migration 0013).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, exists, false, func, literal, literal_column, select, text, tuple_

from backend.core.job_filters import JobFilter
from backend.store.engine import SEARCH_FOLD, search_fold
from backend.store.models import Job, JobKwarg

#: The text the PostgreSQL trigram index holds, exactly as its CREATE INDEX spells it (a query
#: uses the index only when its expression is the same).
PG_SEARCH_TEXT = "lower(jobs.task || ' ' || coalesce(jobs.error, '') || ' ' || coalesce(jobs.progress_message, ''))"
#: The same text on SQLite, tested row by row for a common q, folded by engine.search_fold (SQLite's
#: lower() folds ASCII letters only; the FTS5 index folds every letter).
SQLITE_SEARCH_TEXT = (
    f"{SEARCH_FOLD}(jobs.task || ' ' || coalesce(jobs.error, '') || ' ' || coalesce(jobs.progress_message, ''))"
)
#: The SQLite FTS5 table over jobs (external content: it holds only the trigram index), with a row
#: for each job that has an error or a progress message (migration 0015: not for the task alone).
FTS_TABLE = "jobs_fts"
#: The jobs it holds, as its triggers decide: ``backend.store.vacuum`` refills it from them.
FTS_ROWS = "jobs.error IS NOT NULL OR jobs.progress_message IS NOT NULL"
#: SQLite: the task names that jobs hold, one seek of ``ix_jobs_task_created`` per name (a handful):
#: the index's next name after the last, walked as a loose index scan.
_TASK_NAMES = (
    "WITH RECURSIVE names(task) AS (SELECT (SELECT min(task) FROM jobs) UNION ALL "
    "SELECT (SELECT min(task) FROM jobs WHERE task > names.task) FROM names WHERE names.task IS NOT NULL) "
    "SELECT task FROM names WHERE task IS NOT NULL"
)
#: A q held by at most this many jobs is read from its trigram index and sorted; a more common one
#: is tested row by row along the order's index (the page fills within a few thousand rows).
FEW_MATCHES = 2000
#: PostgreSQL: a q held by this many of the newest NEWEST_PROBED jobs is common.
COMMON_IN_NEWEST, NEWEST_PROBED = 50, 2000


def _like_pattern(q: str) -> str:
    """``q`` as a LIKE pattern matching it anywhere, its wildcards taken literally (lowered in SQL)."""
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _fts_phrase(q: str) -> str:
    """``q`` as one FTS5 phrase: with the trigram tokenizer, a substring match, case-insensitive."""
    return '"' + q.replace('"', '""') + '"'


@dataclass(frozen=True)
class QProbe:
    """How a q is best read: ``common`` (tested row by row along the order's index) or not (read
    from its trigram index); on SQLite also the task names that hold it (``tasks``), since its
    index holds only the jobs with an error or a progress message (migration 0015)."""

    common: bool = False
    tasks: tuple[str, ...] = ()


def _q_clause(q: str, dialect: str, common: bool, tasks: tuple[str, ...] = ()):
    """``q`` matched through its trigram index (few matches: they are read from it and sorted) or,
    when ``common``, row by row while an index is walked in order (the page fills long before a
    sort of every match could end: a substring in 7% of 1M jobs took 227 ms from FTS5, 0.4 ms so)."""
    if common:
        # Not the indexed expression: the planner walks the order's index and tests each row.
        if dialect == "postgresql":
            return text(f"strpos({PG_SEARCH_TEXT}, lower(:search_q)) > 0").bindparams(search_q=q)
        return text(f"instr({SQLITE_SEARCH_TEXT}, {SEARCH_FOLD}(:search_q)) > 0").bindparams(search_q=q)
    if dialect == "postgresql":
        # Lowered by PostgreSQL as the indexed text is (Python's lower() differs: final sigma).
        return literal_column(PG_SEARCH_TEXT).like(func.lower(_like_pattern(q)), escape="\\")
    in_text = f"jobs.rowid IN (SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :search_q)"
    if not tasks:
        return text(in_text).bindparams(search_q=_fts_phrase(q))
    return text(f"({in_text} OR jobs.task IN :search_tasks)").bindparams(
        bindparam("search_tasks", value=list(tasks), expanding=True), search_q=_fts_phrase(q)
    )


def q_probe(session, q: str) -> QProbe:
    """How ``q`` is best read (``QProbe``); nothing to probe for a q holding a NUL (nothing matches)."""
    if "\x00" in q:
        return QProbe()
    if session.get_bind().dialect.name == "postgresql":
        return QProbe(common=q_is_common(session, q))
    folded = search_fold(q)
    tasks = tuple(task for (task,) in session.execute(text(_TASK_NAMES)) if folded in search_fold(task))
    return QProbe(common=q_is_common(session, q, tasks), tasks=tasks)


def q_is_common(session, q: str, tasks: tuple[str, ...] = ()) -> bool:
    """Whether ``q`` is common enough to be tested row by row along the order's index.

    SQLite: more than ``FEW_MATCHES`` jobs hold it (a probe of the FTS table that stops there,
    then of the jobs of ``tasks``, the task names holding it, that stops there too).
    PostgreSQL: ``COMMON_IN_NEWEST`` of the newest ``NEWEST_PROBED`` jobs hold it; a GIN index
    cannot stop early (a common trigram's bitmap is built whole: ~60 ms for 7% of 1M jobs), the
    newest jobs are a short walk of ``ix_jobs_created``, and the walk that serves such a q is as short.
    """
    if session.get_bind().dialect.name == "postgresql":
        newest = (
            select(literal_column(PG_SEARCH_TEXT).label("t"))
            .select_from(Job.__table__)
            .order_by(Job.created_at.desc(), Job.id.desc())
            .limit(NEWEST_PROBED)
            .subquery()
        )
        held = (
            select(literal_column("1"))
            .select_from(newest)
            .where(text("strpos(t, lower(:search_q)) > 0").bindparams(search_q=q))
        )
        found = session.execute(select(func.count()).select_from(held.limit(COMMON_IN_NEWEST).subquery()))
        return found.scalar_one() >= COMMON_IN_NEWEST
    probe = (
        select(literal_column("rowid"))
        .select_from(text(FTS_TABLE))
        .where(text(f"{FTS_TABLE} MATCH :search_q").bindparams(search_q=_fts_phrase(q)))
    )
    found = session.execute(select(func.count()).select_from(probe.limit(FEW_MATCHES + 1).subquery()))
    in_text = found.scalar_one()
    if in_text > FEW_MATCHES or not tasks:
        return in_text > FEW_MATCHES
    of_tasks = select(literal_column("1")).select_from(Job.__table__).where(Job.task.in_(tasks))
    found = session.execute(select(func.count()).select_from(of_tasks.limit(FEW_MATCHES + 1 - in_text).subquery()))
    return in_text + found.scalar_one() > FEW_MATCHES


def search(
    columns,
    filt: JobFilter,
    *,
    dialect: str,
    newest_first: bool = True,
    after=None,
    limit=None,
    common_q=False,
    q_tasks: tuple[str, ...] = (),
):
    """A SELECT of ``columns`` of the jobs matching ``filt``, newest (or oldest) first, after the
    ``(created_at, id)`` ``after`` when given, at most ``limit``; ``common_q`` and ``q_tasks``: ``q_probe``."""
    if _holds_nul(filt):
        # PostgreSQL refuses a NUL in a statement's text; no value stored holds one (ids and task
        # names are the service's, kwargs with one are not indexed): nothing matches, on both stores.
        return select(*columns).select_from(Job.__table__).where(false())
    if filt.kwargs:
        # job_kwargs.created_at is the job's: its index gives the order, jobs is joined by key.
        name, value = filt.kwargs[0]
        created, key = JobKwarg.created_at, JobKwarg.job_id
        query = (
            select(*columns)
            .select_from(JobKwarg)
            .join(Job, Job.id == JobKwarg.job_id)
            .where(JobKwarg.name == name, JobKwarg.value == value)
        )
        if filt.owner is not None:
            # A tenant (or an admin's owner=) walks ix_job_kwargs_owner_lookup: its own rows only.
            query = query.where(JobKwarg.owner == filt.owner)
        for other_name, other_value in filt.kwargs[1:]:
            other = JobKwarg.__table__.alias()
            query = query.where(
                exists().where(other.c.job_id == Job.id, other.c.name == other_name, other.c.value == other_value)
            )
    else:
        created, key = Job.created_at, Job.id
        query = select(*columns)
    query = narrow(query, filt, dialect=dialect, created=created, common_q=common_q, q_tasks=q_tasks)
    if after is not None:
        at, last_id = after
        # A row value: both stores walk the (..., created_at, id) index from there (the OR
        # form made SQLite sort a created_after range whole).
        position, cursor = tuple_(created, key), tuple_(literal(at, created.type), literal(last_id, key.type))
        query = query.where(position < cursor if newest_first else position > cursor)
    order = (created.desc(), key.desc()) if newest_first else (created.asc(), key.asc())
    query = query.order_by(*order)
    if limit is not None:
        query = query.limit(limit)
    return query


def narrow(query, filt: JobFilter, *, dialect: str, created=None, common_q: bool = False, q_tasks=()):
    """``query`` (over jobs) narrowed by every field of ``filt`` but kwargs."""
    created = Job.created_at if created is None else created
    if filt.owner is not None:
        query = query.where(Job.owner == filt.owner)
    if filt.status is not None:
        query = query.where(Job.status == filt.status)
    if filt.task is not None:
        query = query.where(Job.task == filt.task)
    if filt.batch_id is not None:
        query = query.where(Job.batch_id == filt.batch_id)
    if filt.schedule_id is not None:
        query = query.where(Job.schedule_id == filt.schedule_id)
    if filt.created_after is not None:
        query = query.where(created > filt.created_after)
    if filt.created_before is not None:
        query = query.where(created < filt.created_before)
    if filt.q is not None:
        query = query.where(_q_clause(filt.q, dialect, common_q, tuple(q_tasks)))
    return query


def matching_ids(
    sessions, filt: JobFilter, *, statuses: tuple[str, ...], limit: int, max_attempts: int | None = None
) -> list[str]:
    """Ids of the jobs matching ``filt`` whose status is one of ``statuses``, oldest first, at most
    ``limit`` (the bulk actions: cancel acts on live jobs, retry on FAILED and CANCELLED);
    ``max_attempts``: only jobs that have had fewer attempts (a retry skips the others, and they
    would be picked again by every request of the "send again while more" loop)."""
    with sessions() as session:
        probe = q_probe(session, filt.q) if filt.q is not None and not _holds_nul(filt) else QProbe()
        dialect = session.get_bind().dialect.name
        query = search(
            [Job.id], filt, dialect=dialect, newest_first=False, limit=limit, common_q=probe.common, q_tasks=probe.tasks
        )
        if filt.status is None:
            query = query.where(Job.status.in_(statuses))
        if max_attempts is not None:
            query = query.where(Job.attempt < max_attempts)
        return list(session.scalars(query))


def _holds_nul(filt: JobFilter) -> bool:
    texts = [filt.owner, filt.task, filt.q, filt.batch_id, filt.schedule_id, *(v for pair in filt.kwargs for v in pair)]
    return any(text is not None and "\x00" in text for text in texts)
