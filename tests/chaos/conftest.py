"""Fixtures of the chaos suite: one Cluster (Redis, API, workers as real processes on free
ports, in the test's temporary directory) per test, always torn down, with the logs shown
when a test fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.dev.postgres_server import PostgresServer
from tests.chaos.harness import Cluster
from tests.postgres import postgres_server_fixture


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"chaos_rep_{report.when}", report)


@pytest.fixture
def cluster(request, tmp_path, make_store_url) -> Iterator[Cluster]:
    """An empty cluster: the test starts Redis, the API and workers as it needs them."""
    chaos = Cluster(tmp_path)
    # The suite's store (TEST_STORE), empty as on a first deployment: the API migrates it.
    chaos.store_url = make_store_url(migrated=False)
    try:
        yield chaos
    finally:
        strays = chaos.strays()
        chaos.shutdown()
        report = getattr(request.node, "chaos_rep_call", None)
        if report is not None and report.failed:
            print(f"\n==== chaos logs in {tmp_path} ====")
            print("---- api.log (tail) ----\n" + chaos.api_output()[-4000:])
            for host in chaos.api_hosts:
                print(f"---- api-{host.name}.log (tail) ----\n" + host.output()[-3000:])
            for worker in chaos.workers[-6:]:
                print(f"---- worker {worker.name} (tail) ----\n" + worker.output()[-2000:])
        if strays:
            print(f"\nchaos teardown found {len(strays)} orphaned process(es) and killed them: {strays}")


@pytest.fixture
def running(cluster) -> Cluster:
    """A cluster with Redis and the API up (no workers yet)."""
    cluster.start_redis()
    cluster.start_api()
    return cluster


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, for a scenario that stops or restarts it (the
    session's server is shared by every other test); skips, saying why, when none can start."""
    yield from postgres_server_fixture()
