"""The import rule of ARCHITECTURE.md holds, and breaking it fails the suite.

The contracts live in .importlinter; `lint-imports` checks them. These tests run it on the
package as it is, and on copies broken on purpose, so a contract that stopped biting shows up.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# Contract names, as .importlinter spells them.
LAYERS = "Layers: each imports only from the layers below it"
STORE_BROKER = "The store and the broker know nothing of each other"
FLASK = "Flask only in the API layer, the app factory and the CLI"
SQLALCHEMY = "SQLAlchemy only in the store"
WORKER = "The worker runtime loads neither Flask, SQLAlchemy nor the API side"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over the ``backend`` package found in ``root``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def contract_lines(output: str) -> dict[str, str]:
    """Each contract's name with KEPT or BROKEN, from the summary of lint-imports."""
    verdicts = {}
    for line in output.splitlines():
        for verdict in ("KEPT", "BROKEN"):
            if f" {verdict}" in line and not line.startswith("Contracts:"):
                name = line.split(f" {verdict}")[0].strip()
                verdicts[name] = verdict
    return verdicts


def test_every_import_contract_holds():
    # When lint-imports checks the package
    result = lint_imports(ROOT)

    # Then every contract is kept
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    "entry",
    [
        "import backend.runner.worker",
        # The launcher people type, `python backend/worker.py`, up to the point where it would start.
        "import runpy; runpy.run_path('backend/worker.py', run_name='launcher')",
    ],
)
def test_the_worker_loads_neither_flask_nor_sqlalchemy(entry):
    # Given a fresh interpreter
    check = (
        f"import sys; {entry}; "
        "assert 'backend.runner.worker' in sys.modules; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'flask', 'werkzeug', 'sqlalchemy', 'alembic'} "
        "or m.startswith(('backend.api', 'backend.store', 'backend.service', 'backend.webhooks', 'backend.recovery'))))"
    )

    # When it imports the worker
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)

    # Then neither Flask nor SQLAlchemy came with it, nor any module of the API side
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("backend/store/models.py", "import flask", FLASK),
        # Indirectly too: the API's accessor imports Flask (only gunicorn's config may reach it).
        ("backend/scheduler.py", "import backend.api.context", FLASK),
        ("backend/runner/reporter.py", "import sqlalchemy", WORKER),
        ("backend/runner/reporter.py", "import sqlalchemy", SQLALCHEMY),
        ("backend/store/models.py", "import backend.broker.queues", STORE_BROKER),
        ("backend/core/errors.py", "import backend.service", LAYERS),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract):
    # Given a copy of the package, where lint-imports finds no such import
    shutil.copytree(ROOT / "backend", tmp_path / "backend", ignore=shutil.ignore_patterns("__pycache__", "data"))
    client = ROOT / "jobservice_client"  # .importlinter's second root package
    shutil.copytree(client, tmp_path / client.name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    violation = f"{module.removesuffix('.py').replace('/', '.')} -> {line.removeprefix('import ')}"
    before = lint_imports(tmp_path).stdout
    assert contract in contract_lines(before), before
    assert violation not in before, before

    # When one module of the copy gains the forbidden import
    with (tmp_path / module).open("a") as source:
        source.write(f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path)

    # Then lint-imports fails, naming that contract and the import
    assert result.returncode != 0, result.stdout
    assert contract_lines(result.stdout)[contract] == "BROKEN", result.stdout
    assert violation in result.stdout.split(f"\n{contract}\n")[-1], result.stdout
