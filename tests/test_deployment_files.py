"""The deployment files stay valid and safe: docker-compose.yml (alone and with the PostgreSQL
override) passes `docker-compose config`, no secret is ever in a process's arguments, gunicorn is
only reached through nginx, the Kubernetes sidecar runs the same nginx server block as
docker-compose, and the Kubernetes layout runs several API pods on PostgreSQL (a rolling update,
a disruption budget, a migration Job, no volume) with a single-node SQLite overlay beside it."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from backend.core.settings import DEFAULTS
from tests.conftest import ROOT

SENTINEL = "sentinel-redis-password-5f3a9c0e"
PG_SENTINEL = "5e771e1b0a9c4d2e8f3a6b1c7d9e0f42"
K8S = ROOT / "deploy/kubernetes"
K8S_SQLITE = ROOT / "deploy/kubernetes-sqlite"


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def k8s_documents() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_containers(docs: list[dict] | None = None) -> list[dict]:
    containers = []
    for doc in k8s_documents() if docs is None else docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        containers += spec.get("containers", []) + spec.get("initContainers", [])
    return containers


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's interpolation, enough for this file: $$ is a literal $, ${NAME...} and $NAME
    are variables (with :- defaults and :? errors)."""
    text = text.replace("$$", "\0")

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2) or ""
        return variables.get(name, default.removeprefix(":-") if default.startswith(":-") else "")

    text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)((?::?[-?])[^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)", value, text)
    return text.replace("\0", "$")


def argv_strings(service_or_container: dict) -> list[str]:
    """Every string that becomes some process's arguments: command, entrypoint, args, and the
    commands of healthchecks and probes."""
    found: list[str] = []

    def add(value) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list):
            found.extend(str(item) for item in value)

    for key in ("command", "entrypoint", "args"):
        add(service_or_container.get(key))
    add((service_or_container.get("healthcheck") or {}).get("test"))
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        add(((service_or_container.get(probe) or {}).get("exec") or {}).get("command"))
    return found


# -- docker-compose ----------------------------------------------------------------------


needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose is not installed (.ci/run installs it)"
)


@needs_compose
def test_docker_compose_config_passes_and_keeps_the_password_out_of_arguments(tmp_path):
    for name in ("docker-compose.yml", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    env = (ROOT / ".env.example").read_text().replace("CHANGE_ME_redis_password", SENTINEL)
    (tmp_path / ".env").write_text(env)
    result = subprocess.run(["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == {"redis", "api", "streams", "proxy", "worker", "scheduler"}
    assert "appendfsync" in result.stdout and "noeviction" in result.stdout
    for name, service in config["services"].items():
        for text in argv_strings(service):
            assert SENTINEL not in text, (name, text)
    assert SENTINEL in str(config["services"]["redis"]["environment"])  # it does reach Redis


def test_compose_never_puts_the_redis_password_in_arguments():
    services = compose()["services"]
    variables = {"REDIS_PASSWORD": SENTINEL}
    for name, service in services.items():
        for text in argv_strings(service):
            assert SENTINEL not in interpolate(text, variables), (name, text)
            assert "--requirepass" not in text and " -a " not in text, (name, text)
    redis = services["redis"]
    assert SENTINEL in interpolate(str(redis["environment"]["REDISCLI_AUTH"]), variables)
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_compose_publishes_nginx_only_and_no_standalone_dashboard():
    services = compose()["services"]
    assert "dashboard" not in services  # the unhardened rq-dashboard pages on 9181
    assert "9181" not in (ROOT / "docker-compose.yml").read_text()
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy"}
    proxy = services["proxy"]
    assert proxy["ports"] == ["${API_PUBLISH:-0.0.0.0:5000}:8080"]
    assert "./deploy/nginx/jobservice.conf:/etc/nginx/templates/default.conf.template:ro" in proxy["volumes"]
    assert proxy["environment"]["JOBSERVICE_UPSTREAM"] == "api:5000"
    # The event streams: the gevent process, behind the same proxy, never published
    assert proxy["environment"]["JOBSERVICE_STREAMS_UPSTREAM"] == "streams:5001"
    assert services["streams"]["command"][:3] == ["gunicorn", "-c", "backend/gunicorn_streams.py"]
    assert "env_file" not in proxy  # nginx gets no secrets


def compose_config(tmp_path: Path, *files: str, env_extra: str = "") -> subprocess.CompletedProcess:
    """`docker-compose -f ... config` on a copy of the repository's files, with .env.example's
    Redis password replaced and ``env_extra`` appended to .env."""
    for path in [*ROOT.glob("docker-compose*.yml"), ROOT / "Dockerfile"]:
        shutil.copy(path, tmp_path / path.name)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    env = (ROOT / ".env.example").read_text().replace("CHANGE_ME_redis_password", SENTINEL)
    (tmp_path / ".env").write_text(env + env_extra)
    args = [arg for name in files for arg in ("-f", name)]
    return subprocess.run(["docker-compose", *args, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60)


@needs_compose
def test_compose_with_the_postgresql_override_runs_two_apis_on_a_healthy_migrated_postgres(tmp_path):
    # Given .env with a PostgreSQL password; When compose merges the override into the base file
    result = compose_config(
        tmp_path, "docker-compose.yml", "docker-compose.postgres.yml", env_extra=f"POSTGRES_PASSWORD={PG_SENTINEL}\n"
    )
    # Then the configuration is valid
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"redis", "postgres", "migrate", "api", "streams", "proxy", "worker", "scheduler"}
    # And PostgreSQL keeps its data in a volume and is healthy once pg_isready says so
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert any(volume.startswith("postgres-data:/var/lib/postgresql/data") for volume in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "ports" not in postgres
    # And every process of the service uses it, the API scaled to two behind nginx
    url = f"postgresql+psycopg://jobs:{PG_SENTINEL}@postgres:5432/jobs"
    for name in ("migrate", "api", "streams", "scheduler", "worker"):
        assert services[name]["environment"]["DATABASE_URL"] == url, name
    assert services["api"]["scale"] >= 2
    assert services["proxy"]["environment"]["JOBSERVICE_UPSTREAM"] == "api:5000"
    # And migrate runs once the server is healthy, and the API and scheduler only after it
    assert services["migrate"]["command"] == ["python", "-m", "backend", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "streams", "scheduler"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert services[name]["environment"]["MIGRATE_ON_START"] == "0", name
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # And the password reaches PostgreSQL through its environment, never an argument
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == PG_SENTINEL
    for name, service in services.items():
        for text in argv_strings(service):
            assert PG_SENTINEL not in text and SENTINEL not in text, (name, text)


@needs_compose
def test_compose_with_the_postgresql_override_refuses_to_run_without_its_password(tmp_path):
    env = (ROOT / ".env.example").read_text()
    assert "POSTGRES_PASSWORD=CHANGE_ME_" in env  # the example names it, as a placeholder
    result = compose_config(
        tmp_path, "docker-compose.yml", "docker-compose.postgres.yml", env_extra="POSTGRES_PASSWORD=\n"
    )
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_env_example_names_every_setting():
    names = {
        line.lstrip("# ").split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line
    }
    assert set(DEFAULTS) <= names, sorted(set(DEFAULTS) - names)


# -- Kubernetes ----------------------------------------------------------------------------


def test_kubernetes_never_puts_a_secret_in_arguments():
    containers = k8s_containers()
    assert {container["name"] for container in containers} >= {"api", "nginx", "worker", "scheduler", "redis"}
    secret_vars = {
        "REDIS_PASSWORD",
        "REDISCLI_AUTH",
        "INTERNAL_SERVICE_TOKEN",
        "API_KEYS",
        "WEBHOOK_SECRET",
        "DATABASE_URL",
    }
    for container in containers:
        for text in argv_strings(container):
            # $(NAME) is expanded by the kubelet into the process's arguments; $NAME is left to
            # the container's shell, which keeps it out of argv.
            for name in secret_vars:
                assert f"$({name})" not in text, (container["name"], text)
            assert "--requirepass" not in text and " -a " not in text, (container["name"], text)


def test_kubernetes_sends_clients_through_the_nginx_sidecar():
    docs = {(doc["kind"], doc.get("metadata", {}).get("name")): doc for doc in k8s_documents()}
    pod = docs[("Deployment", "jobservice-api")]["spec"]["template"]["spec"]
    containers = {container["name"]: container for container in pod["containers"]}
    api, nginx = containers["api"], containers["nginx"]
    # gunicorn keeps its loopback default: only the sidecar reaches it
    assert "ports" not in api
    assert all(var["name"] != "GUNICORN_BIND" for var in api.get("env", []))
    assert api["command"][:3] == ["gunicorn", "-c", "backend/gunicorn_conf.py"]
    assert {"name": "http", "containerPort": 8080} in nginx["ports"]
    service = docs[("Service", "jobservice-api")]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    env = {var["name"]: var.get("value") for var in nginx["env"]}
    assert env["JOBSERVICE_UPSTREAM"] == "127.0.0.1:5000"
    # The event streams' gevent gunicorn in the same pod, on its loopback default too
    assert env["JOBSERVICE_STREAMS_UPSTREAM"] == "127.0.0.1:5001"
    assert containers["streams"]["command"][:3] == ["gunicorn", "-c", "backend/gunicorn_streams.py"]
    assert "ports" not in containers["streams"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "nginx.yaml" in kustomization["resources"]


def test_kubernetes_nginx_config_is_the_shipped_one():
    docs = {(doc["kind"], doc.get("metadata", {}).get("name")): doc for doc in k8s_documents()}
    sidecar_conf = docs[("ConfigMap", "jobservice-nginx")]["data"]["jobservice.conf"]
    assert sidecar_conf == (ROOT / "deploy/nginx/jobservice.conf").read_text(), (
        "deploy/kubernetes/nginx.yaml must carry deploy/nginx/jobservice.conf verbatim: copy it again"
    )


def by_kind_and_name(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc.get("metadata", {}).get("name")): doc for doc in docs}


def pod_env(pod: dict, container_name: str, docs: list[dict]) -> dict[str, str]:
    """A container's environment as the kubelet builds it from ConfigMaps and its own ``env``
    (``env`` wins over ``envFrom``; Secrets are the user's, not in these files)."""
    container = next(c for c in pod["containers"] if c["name"] == container_name)
    config_maps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in docs if doc["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
    env.update({var["name"]: var["value"] for var in container.get("env", []) if "value" in var})
    return env


def test_kubernetes_runs_several_api_pods_on_postgresql_with_a_migration_job():
    docs = k8s_documents()
    named = by_kind_and_name(docs)
    # The API: two pods or more, replaced one at a time, never below that during a rollout
    api = named[("Deployment", "jobservice-api")]
    assert api["spec"]["replicas"] >= 2
    assert api["spec"]["strategy"]["type"] == "RollingUpdate"
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = api["spec"]["template"]["spec"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    # A PodDisruptionBudget keeps one through a node drain
    budgets = [doc for doc in docs if doc["kind"] == "PodDisruptionBudget"]
    assert any(
        budget["spec"]["selector"]["matchLabels"].items() <= labels.items() and budget["spec"]["minAvailable"] >= 1
        for budget in budgets
    ), budgets
    # No volume: the store is PostgreSQL, named by the Secret (the ConfigMap names no store)
    assert not any("persistentVolumeClaim" in volume for volume in pod.get("volumes", []))
    assert all(not c.get("volumeMounts") for c in pod["containers"] if c["name"] == "api")
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert secret["stringData"]["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "DATABASE_URL" not in named[("ConfigMap", "jobservice-config")]["data"]
    assert "jobservice-secrets" in str(pod["containers"][0]["envFrom"])
    # The schema is migrated by a Job, not by the API pods
    assert pod_env(pod, "api", docs)["MIGRATE_ON_START"] == "0"
    jobs = [doc for doc in docs if doc["kind"] == "Job"]
    commands = [c["command"] for job in jobs for c in job["spec"]["template"]["spec"]["containers"]]
    assert ["python", "-m", "backend", "migrate"] in commands
    assert "jobservice-secrets" in str(jobs[0]["spec"]["template"]["spec"]["containers"][0]["envFrom"])
    # The scheduler: tied to no node and no volume
    scheduler = named[("Deployment", "jobservice-scheduler")]["spec"]["template"]["spec"]
    assert "affinity" not in scheduler and "volumes" not in scheduler
    # And kustomize applies every manifest here (the Secret is the user's copy)
    resources = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert resources == {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (kustomize builds the overlay)")
def test_kubernetes_sqlite_overlay_runs_one_api_pod_on_a_volume():
    # Given the manifests built by kustomize, as `kubectl apply -k` would send them
    for layout in (K8S, K8S_SQLITE):
        result = subprocess.run(["kubectl", "kustomize", str(layout)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    named = by_kind_and_name(docs)
    # Then the API and the scheduler are single pods sharing the SQLite volume on one node
    for name, container in (("jobservice-api", "api"), ("jobservice-scheduler", "scheduler")):
        deployment = named[("Deployment", name)]
        assert deployment["spec"]["replicas"] == 1, name
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}, name
        pod = deployment["spec"]["template"]["spec"]
        env = pod_env(pod, container, docs)
        assert env["DATABASE_URL"] == "sqlite:////data/jobs.db" and env["MIGRATE_ON_START"] == "1", name
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["jobservice-store"], name
    assert ("PersistentVolumeClaim", "jobservice-store") in named
    assert "podAffinity" in named[("Deployment", "jobservice-scheduler")]["spec"]["template"]["spec"]["affinity"]
    # And neither the migration Job nor a budget that one pod could never satisfy during a drain
    assert not [doc for doc in docs if doc["kind"] in ("Job", "PodDisruptionBudget")]
    assert {container["name"] for container in k8s_containers(docs)} >= {"api", "nginx", "worker", "scheduler"}


@pytest.mark.parametrize("where", ["docker-compose", "kubernetes"])
def test_redis_start_script_takes_the_password_from_the_environment_only(tmp_path, where):
    # Given the shipped start script of Redis, run by a shell as the container would, with
    # the embedded redis-server in place of the image's and a password full of quotes
    from redis import Redis

    from backend.dev.redis_server import free_port, redis_server_binary

    if where == "docker-compose":
        script = interpolate(compose()["services"]["redis"]["command"][2], {"REDIS_MAXMEMORY": "0"})
    else:
        redis_doc = next(doc for doc in k8s_documents() if doc["kind"] == "StatefulSet")
        script = redis_doc["spec"]["template"]["spec"]["containers"][0]["args"][2].replace("$$", "$")
    port = free_port()
    script = script.replace("/tmp/redis.conf", str(tmp_path / "redis.conf"))
    script = script.replace("docker-entrypoint.sh redis-server", redis_server_binary())
    script = script.replace("noeviction", f"noeviction --port {port} --bind 127.0.0.1 --dir {tmp_path} --save ''")
    password = 'p"a\\ss $word ' + SENTINEL
    process = subprocess.Popen(["sh", "-c", script], env={"PATH": "/usr/bin:/bin", "REDISCLI_AUTH": password})
    try:
        client = Redis(port=port, password=password, socket_connect_timeout=1)
        for _ in range(100):
            try:
                assert client.ping()
                break
            except Exception:
                assert process.poll() is None, "redis-server did not start with the generated config"
                time.sleep(0.1)
        # Then Redis requires that password, and it is in no process's arguments
        with pytest.raises(Exception, match="(?i)auth"):
            Redis(port=port, socket_connect_timeout=1).set("x", "1")
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode(errors="replace")
        assert SENTINEL not in cmdline and SENTINEL not in script
    finally:
        process.terminate()
        process.wait(timeout=10)
