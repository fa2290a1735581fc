# One image for the API, the workers, the scheduler and the standalone RQ Dashboard;
# docker-compose.yml (or a Kubernetes manifest) picks the command.
#
#   docker build -t jobservice:latest .

# ---- build stage: install the runtime dependencies into a virtualenv ----------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

# ---- runtime stage ---------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    DATABASE_URL=sqlite:////data/jobs.db

# tini as PID 1: forwards SIGTERM to the process (warm shutdown of workers) and reaps
# orphaned children.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin app \
    && install -d -o 10001 -g 10001 -m 0750 /data

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
COPY backend/ ./backend/
COPY deploy/healthcheck.py ./deploy/healthcheck.py

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

EXPOSE 5000 9181

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["gunicorn", "-c", "backend/gunicorn_conf.py", "backend.app:create_app()"]
