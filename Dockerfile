# One image for the API, the workers and the scheduler (RQ Dashboard is part of the API, at
# /rq); docker-compose.yml (or a Kubernetes manifest) picks the command. The API's gunicorn
# sits behind nginx (the stock nginx image with deploy/nginx/jobservice.conf), so this image
# has no proxy of its own.
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

# gunicorn, for the proxy in front of it (docker-compose sets GUNICORN_BIND=0.0.0.0:5000;
# the default, 127.0.0.1:5000, suits a proxy in the same pod).
EXPOSE 5000

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["gunicorn", "-c", "backend/gunicorn_conf.py", "backend.app:create_app()"]
