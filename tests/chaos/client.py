"""The scenarios' HTTP client of the API (real requests to a real server), which counts every
5xx answer so that the checks can fail on one."""

from __future__ import annotations

import threading

import requests


class Api:
    """A client of the API that remembers every answer >= 500 (a 503 needs a Retry-After)."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self._local = threading.local()
        self._lock = threading.Lock()
        self.server_errors: list[str] = []
        self.unavailable = 0  # 503s with Retry-After: allowed while a dependency is down
        self.requests = 0

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def request(self, method: str, path: str, *, timeout: float = 10, **kwargs) -> requests.Response:
        """One request; raises requests.RequestException when the API does not answer."""
        try:
            response = self._session().request(method, self.base_url + path, timeout=timeout, **kwargs)
        except requests.RequestException:
            self._local.session = None  # do not reuse a broken keep-alive connection
            raise
        with self._lock:
            self.requests += 1
            if response.status_code == 503 and response.headers.get("Retry-After"):
                self.unavailable += 1
            elif response.status_code >= 500:
                self.server_errors.append(f"{method} {path} -> {response.status_code}: {response.text[:300]}")
        return response

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def post_task(self, task: str, *, headers: dict | None = None, **body) -> requests.Response:
        """POST /tasks/<task> with ``body``, the answer unchecked: the one submission request
        of the chaos clients (a scenario judges 503s and lost answers itself)."""
        return self.post(f"/tasks/{task}", json=body, headers=headers)

    def submit(self, task: str, **body) -> dict:
        """POST /tasks/<task>; the job of a 202 (or 200), else AssertionError."""
        response = self.post_task(task, **body)
        assert response.status_code in (200, 202), f"submit {task}: {response.status_code} {response.text[:300]}"
        return response.json()

    def job(self, job_id: str) -> dict:
        response = self.get(f"/jobs/{job_id}")
        assert response.status_code == 200, f"GET /jobs/{job_id}: {response.status_code} {response.text[:300]}"
        return response.json()

    def all_jobs(self) -> list[dict]:
        """Every job in the store, complete (arguments and results too), through GET /jobs pages
        of up to 500."""
        jobs: list[dict] = []
        cursor = ""
        while True:
            response = self.get(f"/jobs?limit=500&fields=args,kwargs,result&cursor={cursor}", timeout=20)
            assert response.status_code == 200, f"GET /jobs: {response.status_code} {response.text[:300]}"
            page = response.json()
            jobs.extend(page["jobs"])
            cursor = page["next_cursor"]
            if not cursor:
                return jobs

    def up(self) -> bool:
        try:
            self.get("/monitoring/health", timeout=2)
            return True
        except requests.RequestException:
            return False
