"""Container healthcheck for the API: GET /monitoring/health on the local API.

    python deploy/healthcheck.py [--url URL] [--ignore workers,redis,store]

Exits 0 when the API answers with its health report and every check in it, except the
ignored ones, is ok; exits 1 otherwise, printing why. /monitoring/health is admin only: when
API_KEYS is set, HEALTHCHECK_API_KEY must be one of its admin keys (sent as a Bearer key);
when API_KEYS is unset the API serves loopback callers, which this script is.

Uses the standard library only, so it runs in the image without curl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("HEALTHCHECK_URL", "http://127.0.0.1:5000/monitoring/health"),
        help="health endpoint (default: HEALTHCHECK_URL or the local API on port 5000)",
    )
    parser.add_argument(
        "--ignore",
        default="",
        help="comma-separated checks that may fail (workers, redis, store)",
    )
    parser.add_argument("--timeout", type=float, default=8.0, help="seconds to wait for the API")
    args = parser.parse_args(argv)
    ignored = {name.strip() for name in args.ignore.split(",") if name.strip()}

    request = urllib.request.Request(args.url, headers={"Accept": "application/json"})
    key = os.environ.get("HEALTHCHECK_API_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:  # 503 carries the report too
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: the API does not answer at {args.url}: {exc}")
        return 1
    if status in (401, 403):
        print(f"unhealthy: {status} from {args.url}: set HEALTHCHECK_API_KEY to an admin key listed in API_KEYS")
        return 1
    try:
        checks = json.loads(raw)["checks"]
    except (ValueError, KeyError, TypeError):
        print(f"unhealthy: {status} from {args.url} without a health report")
        return 1
    failing = sorted(name for name, check in checks.items() if not check.get("ok") and name not in ignored)
    if failing:
        details = "; ".join(f"{name}: {checks[name].get('error', 'not ok')}" for name in failing)
        print(f"unhealthy: {details}")
        return 1
    print("ok" + (f" (ignoring {', '.join(sorted(ignored))})" if ignored else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
