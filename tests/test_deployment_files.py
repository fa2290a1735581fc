"""The deployment files stay valid: docker-compose.yml passes `docker-compose config`."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from backend.config import DEFAULTS
from tests.conftest import ROOT


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose is not installed (.ci/run installs it)"
)
def test_docker_compose_config_passes(tmp_path):
    for name in ("docker-compose.yml", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    result = subprocess.run(["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for service in ("redis", "api", "worker", "scheduler", "dashboard"):
        assert f"  {service}:" in result.stdout
    assert "appendfsync" in result.stdout and "noeviction" in result.stdout


def test_env_example_names_every_setting():
    names = {
        line.lstrip("# ").split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line
    }
    assert set(DEFAULTS) <= names, sorted(set(DEFAULTS) - names)
