"""The deployment files stay valid and safe: docker-compose.yml passes `docker-compose config`,
no secret is ever in a process's arguments, gunicorn is only reached through nginx, and the
Kubernetes sidecar runs the same nginx server block as docker-compose."""

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
K8S = ROOT / "deploy/kubernetes"


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def k8s_documents() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_containers() -> list[dict]:
    containers = []
    for doc in k8s_documents():
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


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose is not installed (.ci/run installs it)"
)
def test_docker_compose_config_passes_and_keeps_the_password_out_of_arguments(tmp_path):
    for name in ("docker-compose.yml", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    env = (ROOT / ".env.example").read_text().replace("CHANGE_ME_redis_password", SENTINEL)
    (tmp_path / ".env").write_text(env)
    result = subprocess.run(["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == {"redis", "api", "proxy", "worker", "scheduler"}
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
    assert "env_file" not in proxy  # nginx gets no secrets


def test_env_example_names_every_setting():
    names = {
        line.lstrip("# ").split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line
    }
    assert set(DEFAULTS) <= names, sorted(set(DEFAULTS) - names)


# -- Kubernetes ----------------------------------------------------------------------------


def test_kubernetes_never_puts_a_secret_in_arguments():
    containers = k8s_containers()
    assert {container["name"] for container in containers} >= {"api", "nginx", "worker", "scheduler", "redis"}
    secret_vars = {"REDIS_PASSWORD", "REDISCLI_AUTH", "INTERNAL_SERVICE_TOKEN", "API_KEYS", "WEBHOOK_SECRET"}
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
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "nginx.yaml" in kustomization["resources"]


def test_kubernetes_nginx_config_is_the_shipped_one():
    docs = {(doc["kind"], doc.get("metadata", {}).get("name")): doc for doc in k8s_documents()}
    sidecar_conf = docs[("ConfigMap", "jobservice-nginx")]["data"]["jobservice.conf"]
    assert sidecar_conf == (ROOT / "deploy/nginx/jobservice.conf").read_text(), (
        "deploy/kubernetes/nginx.yaml must carry deploy/nginx/jobservice.conf verbatim: copy it again"
    )


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
