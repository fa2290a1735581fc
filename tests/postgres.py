"""The test session's PostgreSQL: backend/dev/postgres_server.py starts it, and this turns
"cannot start here" into a skip that says why (tests need the server; the module must not need
pytest, since chaos and bench use it too)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.dev.postgres_server import PostgresServer, PostgresUnavailable


def postgres_server_fixture() -> Iterator[PostgresServer]:
    """The session fixture's body (``tests/conftest.py`` registers it as ``postgres_server``)."""
    try:
        server = PostgresServer.launch()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.close()
