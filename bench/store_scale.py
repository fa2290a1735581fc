"""d. Store scale: read latencies with 1k and with 1M jobs stored.

Each store is a migrated SQLite database filled with ended jobs (``bench/storedb.py``; the
1M one is cached under ``bench/.cache/``). The tenant ``small`` owns 1000 of them in both
stores (all of the 1k store, 0.1% of the 1M one: tenants ``big`` and ``medium`` own the rest),
so its queries return the same rows at both sizes. The API (gunicorn, the repository's configuration) runs
with API keys: an admin key (sees every job) and the ``small`` tenant's key (sees its own).
With PostgreSQL, the same two stores are loaded into it (COPY, ``bench/stores.py``). All the
stores are served at once, each by its own API; one keep-alive client per API sends the
requests one at a time, the stores taking turns every ``ROUND`` requests so that all see
the same background load; ``samples`` per endpoint and size (fewer when an endpoint is slow:
about ``SECONDS_PER_ENDPOINT`` per size, at least ``MIN_SAMPLES``).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from bench import storedb
from bench.common import CACHE_DIR, Results, Stack, Workdir, emit, ms, pct, session, table
from bench.stores import POSTGRESQL, SQLITE, Postgres, load_from_sqlite

ADMIN_KEY = "bench-admin-key-0123456789"
SMALL_KEY = "bench-small-tenant-key"
API_KEYS = f"ops:{ADMIN_KEY}:admin,{storedb.SMALL_OWNER}:{SMALL_KEY}"
SECONDS_PER_ENDPOINT = 4.0
MIN_SAMPLES = 40
ROUND = 20

#: GET /jobs's search filters: document 7 and "doc-007" are 20 of the small tenant's jobs in both
#: stores, a batch 50 and a schedule 100 (bench/storedb.py); "range" is the store's last day.
SEARCHES = [
    ("search: kwargs.document_id=7", "admin", "/jobs?kwargs.document_id=7&limit=50"),
    ("search: kwargs.document_id=7&task=word_count", "admin", "/jobs?kwargs.document_id=7&task=word_count&limit=50"),
    ("search: q=doc-007", "admin", "/jobs?q=doc-007&limit=50"),
    ("search: q=always fails (7% of jobs)", "admin", "/jobs?q=always%20fails&limit=50"),
    ("search: created in the last day", "admin", "range"),
    ("search: batch_id", "admin", "/jobs?batch_id=bat_0003&limit=50"),
    ("search: schedule_id", "admin", "/jobs?schedule_id=sch_3&limit=50"),
    ("search: owner=small&status=FAILED", "admin", "/jobs?owner=small&status=FAILED&limit=50"),
    ("tenant search: kwargs.document_id=7", "small", "/jobs?kwargs.document_id=7&limit=50"),
    ("tenant search: q=doc-007", "small", "/jobs?q=doc-007&limit=50"),
]
# (label, who, path); path None: GET /jobs/<id> over sampled ids; "page2": the next page; "range":
# the jobs created in the store's last day.
ENDPOINTS = [
    ("GET /jobs/<id>", "admin", None),
    ("GET /jobs?status=COMPLETED&limit=50", "admin", "/jobs?status=COMPLETED&limit=50"),
    ("GET /jobs?status=COMPLETED&limit=50 (page 2)", "admin", "page2"),
    ("GET /jobs?status=FAILED&limit=50", "admin", "/jobs?status=FAILED&limit=50"),
    ("GET /jobs?status=COMPLETED&task=word_count&limit=50", "admin", "/jobs?status=COMPLETED&task=word_count&limit=50"),
    ("GET /jobs?task=word_count&limit=50", "admin", "/jobs?task=word_count&limit=50"),
    ("GET /jobs?limit=50", "admin", "/jobs?limit=50"),
    ("GET /monitoring/queue/stats", "admin", "/monitoring/queue/stats"),
    ("tenant: GET /jobs/<id>", "small", None),
    ("tenant: GET /jobs?limit=50", "small", "/jobs?limit=50"),
    ("tenant: GET /jobs?status=COMPLETED&limit=50", "small", "/jobs?status=COMPLETED&limit=50"),
    ("tenant: GET /jobs?status=FAILED&limit=50", "small", "/jobs?status=FAILED&limit=50"),
    ("tenant: GET /jobs?task=word_count&limit=50", "small", "/jobs?task=word_count&limit=50"),
    # The search filters (issue 16; the targets of bench/storedb.py match as many jobs at both sizes).
    *SEARCHES,
]
KEYS = {"admin": ADMIN_KEY, "small": SMALL_KEY}
#: The stores' jobs ended up to 30 days ago: retention (30 days by default) would prune the oldest
#: while they are measured.
KEEP_JOBS = {"RETENTION_COMPLETED": "0", "RETENTION_FAILED": "0", "RETENTION_CANCELLED": "0"}


def _urls(stack: Stack, ids: dict[str, list[str]]) -> dict[str, list[str]]:
    """The URLs each endpoint's requests go to on ``stack``."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with session() as http:
        first = http.get(f"{stack.url}/jobs?status=COMPLETED&limit=50", headers=admin, timeout=60).json()
        newest = http.get(f"{stack.url}/jobs?limit=1", headers=admin, timeout=60).json()["jobs"][0]["created_at"]
    page2 = f"/jobs?status=COMPLETED&limit=50&cursor={first['next_cursor']}"
    since = (datetime.fromisoformat(newest) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    special = {"page2": page2, "range": f"/jobs?created_after={since}&limit=50"}
    urls = {}
    for label, who, path in ENDPOINTS:
        if path is None:
            urls[label] = [f"{stack.url}/jobs/{job_id}" for job_id in ids[who]]
        else:
            urls[label] = [stack.url + special.get(path, path)]
    return urls


def _measure(stacks: dict[tuple, Stack], urls: dict[tuple, dict[str, list[str]]], samples: int):
    """Latencies per store and endpoint, the stores' requests interleaved in rounds of ``ROUND``
    so that all see the same background load; and the jobs each request returned."""
    out: dict[tuple, dict[str, list[float]]] = {key: {} for key in stacks}
    returned: dict[tuple, dict[str, int | str]] = {key: {} for key in stacks}
    clients = {key: session() for key in stacks}
    try:
        for label, who, _path in ENDPOINTS:
            headers = {"Authorization": f"Bearer {KEYS[who]}"}
            for key, http in clients.items():
                for i in range(10):  # warm-up
                    r = http.get(urls[key][label][i % len(urls[key][label])], headers=headers, timeout=60)
                    r.raise_for_status()
                body = r.json()
                returned[key][label] = len(body["jobs"]) if isinstance(body.get("jobs"), list) else "-"
                out[key][label] = []
            deadline = time.monotonic() + SECONDS_PER_ENDPOINT * len(stacks)
            done = 0
            while done < samples and (done < MIN_SAMPLES or time.monotonic() < deadline):
                for key, http in clients.items():
                    times, pool = out[key][label], urls[key][label]
                    for i in range(done, min(done + ROUND, samples)):
                        t0 = time.perf_counter()
                        r = http.get(pool[i % len(pool)], headers=headers, timeout=60)
                        times.append(time.perf_counter() - t0)
                        r.raise_for_status()
                done = min(done + ROUND, samples)
    finally:
        for http in clients.values():
            http.close()
    return out, returned


def _start(workdir: Workdir, sizes, samples: int, use_cache: bool, pg: Postgres | None, stacks: dict) -> dict:
    """Start an API on every (store, size) into ``stacks``; the URLs each endpoint's requests go to."""
    urls: dict[tuple, dict[str, list[str]]] = {}
    for size in sizes:
        cache = CACHE_DIR if use_cache and size >= 100_000 else None
        db = storedb.obtain(size, workdir / f"store-{size}.db", cache, log=lambda m: emit(f"  {m}"))
        ids = {
            "admin": storedb.sample_ids(db, min(samples, 500)),
            "small": storedb.sample_ids(db, min(samples, 500), owner=storedb.SMALL_OWNER),
        }
        targets = [(SQLITE, {"db_path": db})]
        if pg is not None:
            url = pg.database()
            load_from_sqlite(db, url, log=lambda m: emit(f"  {m}"))
            targets.append((POSTGRESQL, {"database_url": url}))
        for store, where in targets:
            name = f"store-{size}" + ("" if store == SQLITE else "-pg")
            stacks[store, size] = stack = Stack(workdir, name, API_KEYS=API_KEYS, **KEEP_JOBS, **where)
            total = _total(stack)
            if total != size:
                raise RuntimeError(f"the store on {store} says {total} jobs, expected {size}")
            urls[store, size] = _urls(stack, ids)
    return urls


def run(
    workdir: Workdir,
    results: Results,
    *,
    sizes: tuple[int, ...],
    samples: int,
    use_cache: bool = True,
    pg: Postgres | None = None,
) -> None:
    stacks: dict[tuple, Stack] = {}
    try:
        urls = _start(workdir, sizes, samples, use_cache, pg, stacks)
        measured, returned = _measure(stacks, urls, samples)
    finally:
        for (store, _size), stack in stacks.items():
            stack.stop()
            if store == SQLITE:
                for leftover in (stack.db_path, *stack.db_path.parent.glob(stack.db_path.name + "-*")):
                    leftover.unlink(missing_ok=True)
            else:
                pg.server.drop_database(stack.database_url.rsplit("/", 1)[1])
    stores = list(dict.fromkeys(store for store, _size in stacks))
    large = max(sizes)
    for store in stores:
        _report(store, sizes, measured, returned, results)
    if POSTGRESQL in stores:
        _compare(large, measured, results)


def _report(store: str, sizes, measured: dict, returned: dict, results: Results) -> None:
    """The table of one store's sizes, and the 1M/1k checks."""
    small, large = min(sizes), max(sizes)
    where = "" if store == SQLITE else f" on {store}"
    rows = []
    for label, _who, _path in ENDPOINTS:
        row = [label]
        for size in sizes:
            got = measured[store, size][label]
            row += [ms(pct(got, 50)), ms(pct(got, 99))]
        if small != large:
            r50 = pct(measured[store, large][label], 50) / pct(measured[store, small][label], 50)
            r99 = pct(measured[store, large][label], 99) / pct(measured[store, small][label], 99)
            row += [f"{r50:.2f}", f"{r99:.2f}"]
            results.ratio(f"store{where} {label} p50 ({_n(large)}/{_n(small)})", r50)
            results.ratio(f"store{where} {label} p99 ({_n(large)}/{_n(small)})", r99)
            results.check(
                f"store{where} {label}: p50 at {_n(large)} / at {_n(small)}", f"{r50:.2f}", "<= 1.50", r50 <= 1.5
            )
            results.check(
                f"store{where} {label}: p99 at {_n(large)} / at {_n(small)}", f"{r99:.2f}", "<= 1.50", r99 <= 1.5
            )
        row.append("/".join(str(returned[store, size][label]) for size in sizes))
        row.append("/".join(str(len(measured[store, size][label])) for size in sizes))
        rows.append(row)
    headers = ["endpoint"]
    for size in sizes:
        headers += [f"{_n(size)} p50 ms", f"{_n(size)} p99 ms"]
    if small != large:
        headers += ["p50 ratio", "p99 ratio"]
    headers += ["jobs returned", "requests"]
    emit(
        table(
            f"d. Store scale on {store}: one request at a time, one keep-alive client per store, all interleaved",
            headers,
            rows,
        )
    )
    emit(
        f"admin: an admin API key (no owner filter). tenant: the key of 'small', who owns {storedb.SMALL_JOBS} jobs\n"
        f"in both stores ({100 * storedb.SMALL_JOBS / small:.3g}% of the {_n(small)} store, "
        f"{100 * storedb.SMALL_JOBS / large:.3g}% of the {_n(large)} store)."
    )
    stats_p50 = pct(measured[store, large]["GET /monitoring/queue/stats"], 50)
    results.check(
        f"store{where}: /monitoring/queue/stats p50 at {_n(large)}",
        f"{stats_p50 * 1000:.2f} ms",
        "< 20 ms",
        stats_p50 < 0.02,
    )


def _compare(large: int, measured: dict, results: Results) -> None:
    """Each endpoint's p50 at the large size, PostgreSQL against SQLite (a latency: SQLite's / PostgreSQL's)."""
    for label, _who, _path in ENDPOINTS:
        sqlite, postgresql = pct(measured[SQLITE, large][label], 50), pct(measured[POSTGRESQL, large][label], 50)
        results.stores_compared(f"store {_n(large)} {label} p50 ms", ms(sqlite), ms(postgresql), sqlite / postgresql)


def _total(stack: Stack) -> int:
    with session() as http:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        return http.get(f"{stack.url}/monitoring/queue/stats", headers=headers, timeout=60).json()["total_jobs"]


def _n(size: int) -> str:
    return f"{size // 1_000_000}M" if size >= 1_000_000 else f"{size // 1000}k" if size >= 1000 else str(size)
