"""The job store's engine, sessions and schema upgrades.

SQLite gets WAL (readers never wait for the writer), writers that take turns on a file lock
(``backend.store.sqlite_writers``; the busy timeout still bounds other waits for SQLite's lock) and
foreign keys on. PostgreSQL (``postgresql+psycopg://``) gets a bounded pool and no server-side
prepared statements, so it works behind pgbouncer in transaction mode. The schema is whatever
Alembic's head says; ``migrate`` brings any database there (the API calls it at start unless
MIGRATE_ON_START is off), one process at a time.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, pool, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from backend.core.settings import PACKAGE_DIR
from backend.store.sqlite_writers import WriterTurnConnection

log = logging.getLogger(__name__)

MIGRATIONS_DIR = PACKAGE_DIR / "store" / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: The key of the PostgreSQL advisory lock that lets one process at a time migrate a database.
MIGRATION_LOCK_KEY = 0x6A6F6273_6D696772  # "jobsmigr"


#: A PostgreSQL server or link that vanished without closing (a partition, a host power cut) is
#: noticed within about a minute, and the request waiting on it answers 503: keepalive probes
#: while a statement runs (30 s idle, then 3 probes 10 s apart), and tcp_user_timeout (ms) when
#: sent data goes unacknowledged, as a pooled connection's first statement after the cut (without
#: it Linux retransmits for ~15 min). Measured behind an iptables DROP: 60 s and 62 s, each
#: OperationalError. Neither limits a long statement: the server's kernel answers the probes.
PG_TCP_TIMEOUTS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


def _connect_args(url: URL, *, connect_timeout: int | None = None) -> dict[str, object]:
    """Driver options: psycopg prepares no statement on the server, since pgbouncer in transaction
    mode hands each transaction a different server connection that would not know them; opening a
    connection gives up after ``connect_timeout`` seconds (unless the URL names its own)."""
    if url.get_backend_name() == "postgresql" and url.get_driver_name() == "psycopg":
        args: dict[str, object] = {"prepare_threshold": None, **PG_TCP_TIMEOUTS}
        if connect_timeout is not None and "connect_timeout" not in url.query:
            args["connect_timeout"] = connect_timeout
        return args
    return {}


#: The SQLite function folding q's text (registered on every connection).
SEARCH_FOLD = "jobservice_fold"


def search_fold(value: str | None) -> str | None:
    """``value`` lowered beyond ASCII (SQLite's lower() folds A-Z only), final sigma as sigma: the
    folding of FTS5's trigram index, so a q matches alike on its index and row by row."""
    return None if value is None else value.lower().replace("\u03c2", "\u03c3")


def make_engine(
    url: str, *, pool_size: int = 5, max_overflow: int = 10, pool_timeout: float = 30.0, connect_timeout: int = 5
) -> Engine:
    """Create the engine for ``url``; SQLite files get WAL, writers' turns, a busy timeout and
    foreign keys, other databases a pool of ``pool_size`` (+ ``max_overflow``) connections, each
    opened within ``connect_timeout`` seconds."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            connect_args=_connect_args(parsed, connect_timeout=connect_timeout),
        )
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={
            "check_same_thread": False,
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
            "factory": WriterTurnConnection,
        },
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        # q's row-by-row test (store/job_search.py) folds case as the FTS5 trigram index does.
        dbapi_conn.create_function(SEARCH_FOLD, 1, search_fold, deterministic=True)

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def dialect_insert(dialect: str):
    """The ``insert`` construct with ON CONFLICT support for a dialect's name."""
    return pg_insert if dialect == "postgresql" else sqlite_insert


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Serialise upgrades of one SQLite file across processes (several gunicorn workers)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        yield
        return
    lock_path = Path(parsed.database).with_suffix(".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _migrate_postgresql(url: str, *, connect_timeout: int) -> None:
    """Upgrade under a transaction-level advisory lock taken on Alembic's own connection: the
    other processes wait for the commit, then find the schema at head (PostgreSQL's DDL is
    transactional, so a failed upgrade leaves nothing half done)."""
    engine = create_engine(
        url, poolclass=pool.NullPool, connect_args=_connect_args(make_url(url), connect_timeout=connect_timeout)
    )
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            cfg = alembic_config(url)
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()


def schema_behind(engine: Engine) -> str | None:
    """Why the store's schema is not at Alembic's head (its revision and the head), or None when it is."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(engine.url.render_as_string(hide_password=False)))
    head = script.get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current == head:
        return None
    if current is not None and current not in {revision.revision for revision in script.walk_revisions()}:
        # A revision newer than this code knows: a rolling update whose migration ran first.
        log.warning("the store's schema is at revision %s, newer than this code's head %s", current, head)
        return None
    return f"the store's schema is at revision {current or 'none (an empty database)'}, not at head {head}"


def migrate(url: str, *, connect_timeout: int = 5) -> None:
    """Upgrade the database at ``url`` to the newest schema; concurrent callers take turns.

    ``connect_timeout``: seconds to open a PostgreSQL connection (DB_CONNECT_TIMEOUT).
    """
    if make_url(url).get_backend_name() == "postgresql":
        _migrate_postgresql(url, connect_timeout=connect_timeout)
    else:
        with _migration_lock(url):
            command.upgrade(alembic_config(url), "head")
    log.info("job store at schema head")
