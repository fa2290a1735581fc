"""d. Store scale: read latencies with 1k and with 1M jobs stored.

Each store is a migrated SQLite database filled with ended jobs (``bench/storedb.py``; the
1M one is cached under ``bench/.cache/``). The tenant ``small`` owns 1000 of them in both
stores (all of the 1k store, 0.1% of the 1M one: tenants ``big`` and ``medium`` own the rest),
so its queries return the same rows at both sizes. The API (gunicorn, the repository's configuration) runs
with API keys: an admin key (sees every job) and the ``small`` tenant's key (sees its own).
Both stores are served at once, each by its own API; one keep-alive client per API sends the
requests one at a time, the two sizes taking turns every ``ROUND`` requests so that both see
the same background load; ``samples`` per endpoint and size (fewer when an endpoint is slow:
about ``SECONDS_PER_ENDPOINT`` per size, at least ``MIN_SAMPLES``).
"""

from __future__ import annotations

import time

from bench import storedb
from bench.common import CACHE_DIR, Results, Stack, Workdir, emit, ms, pct, session, table

ADMIN_KEY = "bench-admin-key-0123456789"
SMALL_KEY = "bench-small-tenant-key"
API_KEYS = f"ops:{ADMIN_KEY}:admin,{storedb.SMALL_OWNER}:{SMALL_KEY}"
SECONDS_PER_ENDPOINT = 4.0
MIN_SAMPLES = 40
ROUND = 20

# (label, who, path); path None: GET /jobs/<id> over sampled ids; "page2": the next page.
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
]
KEYS = {"admin": ADMIN_KEY, "small": SMALL_KEY}


def _urls(stack: Stack, ids: dict[str, list[str]]) -> dict[str, list[str]]:
    """The URLs each endpoint's requests go to on ``stack``."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with session() as http:
        first = http.get(f"{stack.url}/jobs?status=COMPLETED&limit=50", headers=admin, timeout=60).json()
    page2 = f"/jobs?status=COMPLETED&limit=50&cursor={first['next_cursor']}"
    urls = {}
    for label, who, path in ENDPOINTS:
        if path is None:
            urls[label] = [f"{stack.url}/jobs/{job_id}" for job_id in ids[who]]
        else:
            urls[label] = [stack.url + (page2 if path == "page2" else path)]
    return urls


def _measure(stacks: dict[int, Stack], urls: dict[int, dict[str, list[str]]], samples: int):
    """Latencies per size and endpoint, the sizes' requests interleaved in rounds of ``ROUND``
    so that both stores see the same background load; and the jobs each request returned."""
    out: dict[int, dict[str, list[float]]] = {size: {} for size in stacks}
    returned: dict[int, dict[str, int | str]] = {size: {} for size in stacks}
    clients = {size: session() for size in stacks}
    try:
        for label, who, _path in ENDPOINTS:
            headers = {"Authorization": f"Bearer {KEYS[who]}"}
            for size, http in clients.items():
                for i in range(10):  # warm-up
                    r = http.get(urls[size][label][i % len(urls[size][label])], headers=headers, timeout=60)
                    r.raise_for_status()
                body = r.json()
                returned[size][label] = len(body["jobs"]) if isinstance(body.get("jobs"), list) else "-"
                out[size][label] = []
            deadline = time.monotonic() + SECONDS_PER_ENDPOINT * len(stacks)
            done = 0
            while done < samples and (done < MIN_SAMPLES or time.monotonic() < deadline):
                for size, http in clients.items():
                    times, pool = out[size][label], urls[size][label]
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


def run(workdir: Workdir, results: Results, *, sizes: tuple[int, ...], samples: int, use_cache: bool = True) -> None:
    stacks: dict[int, Stack] = {}
    urls: dict[int, dict[str, list[str]]] = {}
    try:
        for size in sizes:
            cache = CACHE_DIR if use_cache and size >= 100_000 else None
            db = storedb.obtain(size, workdir / f"store-{size}.db", cache, log=lambda m: emit(f"  {m}"))
            ids = {
                "admin": storedb.sample_ids(db, min(samples, 500)),
                "small": storedb.sample_ids(db, min(samples, 500), owner=storedb.SMALL_OWNER),
            }
            stacks[size] = stack = Stack(workdir, f"store-{size}", db_path=db, API_KEYS=API_KEYS)
            total = _total(stack)
            if total != size:
                raise RuntimeError(f"the store says {total} jobs, expected {size}")
            urls[size] = _urls(stack, ids)
        measured, returned = _measure(stacks, urls, samples)
    finally:
        for stack in stacks.values():
            stack.stop()
            for leftover in (stack.db_path, *stack.db_path.parent.glob(stack.db_path.name + "-*")):
                leftover.unlink(missing_ok=True)
    small, large = min(sizes), max(sizes)
    rows = []
    for label, _who, _path in ENDPOINTS:
        row = [label]
        for size in sizes:
            got = measured[size][label]
            row += [ms(pct(got, 50)), ms(pct(got, 99))]
        if small != large:
            r50 = pct(measured[large][label], 50) / pct(measured[small][label], 50)
            r99 = pct(measured[large][label], 99) / pct(measured[small][label], 99)
            row += [f"{r50:.2f}", f"{r99:.2f}"]
            results.ratio(f"store {label} p50 ({_n(large)}/{_n(small)})", r50)
            results.ratio(f"store {label} p99 ({_n(large)}/{_n(small)})", r99)
            results.check(f"store {label}: p50 at {_n(large)} / at {_n(small)}", f"{r50:.2f}", "<= 1.50", r50 <= 1.5)
            results.check(f"store {label}: p99 at {_n(large)} / at {_n(small)}", f"{r99:.2f}", "<= 1.50", r99 <= 1.5)
        row.append("/".join(str(returned[size][label]) for size in sizes))
        row.append("/".join(str(len(measured[size][label])) for size in sizes))
        rows.append(row)
    headers = ["endpoint"]
    for size in sizes:
        headers += [f"{_n(size)} p50 ms", f"{_n(size)} p99 ms"]
    if small != large:
        headers += ["p50 ratio", "p99 ratio"]
    headers += ["jobs returned", "requests"]
    emit(
        table(
            "d. Store scale: one request at a time, one keep-alive client per store, sizes interleaved", headers, rows
        )
    )
    emit(
        f"admin: an admin API key (no owner filter). tenant: the key of 'small', who owns {storedb.SMALL_JOBS} jobs\n"
        f"in both stores ({100 * storedb.SMALL_JOBS / small:.3g}% of the {_n(small)} store, "
        f"{100 * storedb.SMALL_JOBS / large:.3g}% of the {_n(large)} store)."
    )
    stats_p50 = pct(measured[large]["GET /monitoring/queue/stats"], 50)
    results.check(
        f"store: /monitoring/queue/stats p50 at {_n(large)}", f"{stats_p50 * 1000:.2f} ms", "< 20 ms", stats_p50 < 0.02
    )


def _total(stack: Stack) -> int:
    with session() as http:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        return http.get(f"{stack.url}/monitoring/queue/stats", headers=headers, timeout=60).json()["total_jobs"]


def _n(size: int) -> str:
    return f"{size // 1_000_000}M" if size >= 1_000_000 else f"{size // 1000}k" if size >= 1000 else str(size)
