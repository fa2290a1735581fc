"""Copy the whole job store from one database to another, for moving from SQLite to PostgreSQL.

The target is migrated to head and must be empty, so a copy never merges into live data; rows go
in batches in foreign-key order (by COPY into PostgreSQL), so a store of a million jobs never
sits in memory at once; the row counts are compared per table before the copy commits (a source
written to meanwhile leaves the target empty), and PostgreSQL's sequences are moved past the
copied ids so the next insert does not collide with a copied row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy import Connection, Engine, Integer, Row, Table, func, select, text

from backend.store.engine import make_engine, migrate, schema_behind
from backend.store.models import Base

log = logging.getLogger(__name__)

BATCH_SIZE = 1000


class CopyError(Exception):
    """Raised when a copy is refused (source behind head, target not empty) or its counts differ."""


def _count(engine: Engine, table: Table) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


def _first_non_empty(engine: Engine) -> str | None:
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            if connection.execute(select(table).limit(1)).first() is not None:
                return table.name
    return None


def _copy_table(source: Engine, writer: Connection, table: Table, batch_size: int) -> int:
    """Stream ``table`` in primary-key order into ``writer``'s transaction, ``batch_size`` rows at a time."""
    copied = 0
    keys = [column.key for column in table.columns]
    with source.connect() as reader:
        # stream_results: a server-side cursor on PostgreSQL, so batches really are read one at a time.
        result = reader.execution_options(stream_results=True, yield_per=batch_size).execute(
            select(table).order_by(*table.primary_key.columns)
        )
        if writer.dialect.name == "postgresql":
            return _copy_into_postgresql(result.partitions(batch_size), writer, table)
        for rows in result.partitions(batch_size):
            writer.execute(table.insert(), [dict(zip(keys, row, strict=True)) for row in rows])
            copied += len(rows)
    return copied


def _copy_into_postgresql(batches: Iterable[Sequence[Row]], writer: Connection, table: Table) -> int:
    """COPY the rows in: 4-5x faster than INSERTs, which PostgreSQL parses and plans row by row
    (100k jobs and their attempts: 52 s by INSERT). Each value goes through its column type's bind
    processing for this dialect first, so the rows stored are those an INSERT would have stored."""
    processors = [column.type.dialect_impl(writer.dialect).bind_processor(writer.dialect) for column in table.columns]
    names = ", ".join(writer.dialect.identifier_preparer.quote(column.name) for column in table.columns)
    copied = 0
    cursor = writer.connection.driver_connection.cursor()
    with cursor.copy(f"COPY {writer.dialect.identifier_preparer.format_table(table)} ({names}) FROM STDIN") as copy:
        for rows in batches:
            for row in rows:
                copy.write_row(
                    [
                        value if process is None else process(value)
                        for process, value in zip(processors, row, strict=True)
                    ]
                )
            copied += len(rows)
    return copied


def _verified_counts(source: Engine, writer: Connection) -> list[tuple[str, int]]:
    """Each table's row count in the target's transaction, compared with the source's now.

    Raises:
        CopyError: a table's counts differ (something wrote to the source during the copy).
    """
    counts, differing = [], []
    for table in Base.metadata.sorted_tables:
        found = writer.execute(select(func.count()).select_from(table)).scalar_one()
        expected = _count(source, table)
        if expected != found:
            differing.append(f"{table.name} ({expected} in the source, {found} copied)")
        counts.append((table.name, found))
    if differing:
        raise CopyError(
            f"row counts differ after the copy: {', '.join(differing)}; something wrote to the source while it "
            "was copied (stop every API, scheduler and worker on it first); the target was left empty"
        )
    return counts


def _advance_sequences(connection: Connection) -> None:
    """Move each autoincrement id's PostgreSQL sequence past the copied maximum."""
    if connection.dialect.name != "postgresql":
        return  # SQLite's rowid picks max(id)+1 by itself
    for table in Base.metadata.sorted_tables:
        column = table.autoincrement_column
        if column is None or not isinstance(column.type, Integer):
            continue
        sequence = connection.execute(
            text("SELECT pg_get_serial_sequence(:table, :column)"), {"table": table.name, "column": column.name}
        ).scalar_one()
        if sequence is None:
            continue
        top = connection.execute(select(func.max(column))).scalar_one()
        # is_called=false with 1 on an empty table: the next id is 1, as on a fresh database.
        connection.execute(
            text("SELECT setval(:sequence, :value, :called)"),
            {"sequence": sequence, "value": top or 1, "called": top is not None},
        )


def copy_store(
    source_url: str,
    target_url: str,
    *,
    batch_size: int = BATCH_SIZE,
    on_table: Callable[[str, int], None] | None = None,
) -> int:
    """Copy every table from ``source_url`` into the empty store at ``target_url`` and verify counts.

    Returns the number of rows copied. ``on_table(name, count)`` is called after each verified table.

    Raises:
        CopyError: the source is not at head, the target holds rows, or a table's counts differ.
    """
    source = make_engine(source_url)
    try:
        behind = schema_behind(source)
        if behind is not None:
            raise CopyError(f"the source: {behind}; run python -m backend migrate on it first")
        migrate(target_url)
        target = make_engine(target_url)
        try:
            occupied = _first_non_empty(target)
            if occupied is not None:
                raise CopyError(f"the target is not empty (table {occupied} has rows); copy only into an empty store")
            # One transaction, counts verified before it commits: a copy that fails or differs
            # leaves the target empty, so it can simply be run again.
            with target.begin() as writer:
                for table in Base.metadata.sorted_tables:
                    copied = _copy_table(source, writer, table, batch_size)
                    log.info("copied %d rows of %s", copied, table.name)
                _advance_sequences(writer)
                counts = _verified_counts(source, writer)
            if on_table is not None:
                for name, count in counts:
                    on_table(name, count)
            return sum(count for _name, count in counts)
        finally:
            target.dispose()
    finally:
        source.dispose()
