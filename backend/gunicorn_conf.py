"""gunicorn settings for the API: ``gunicorn -c backend/gunicorn_conf.py "backend.app:create_app()"``."""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:5000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
accesslog = "-"
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None


def child_exit(server, worker):
    """Drop a dead process's samples from prometheus-client's multiprocess files."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
