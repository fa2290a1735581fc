"""The Prometheus counters and histograms, defined once for every layer that records them.

They live below the API so that the worker-report path and the webhook dispatcher can record
without importing Flask; ``backend/api/metrics.py`` serves them at ``GET /metrics``. Names and
labels are part of the public metrics contract: dashboards and alerts select on them.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUEST_LATENCY = Histogram(
    "jobservice_http_request_duration_seconds",
    "API request latency by endpoint",
    ["endpoint", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
JOB_RUN_SECONDS = Histogram(
    "jobservice_job_run_seconds",
    "Time from an attempt's start to its end",
    ["task", "status"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600),
)
QUEUE_WAIT_SECONDS = Histogram(
    "jobservice_job_queue_wait_seconds",
    "Time from a job's submission to the start of its first attempt",
    ["task"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800),
)
WEBHOOK_DELIVERIES = Counter("jobservice_webhook_deliveries_total", "Webhook delivery attempts by outcome", ["outcome"])
JOBS_PRUNED = Counter("jobservice_jobs_pruned_total", "Ended jobs deleted by retention (prune), by status", ["status"])
