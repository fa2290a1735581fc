# Two commands on a fresh machine: `make run` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format chaos bench bench-all clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m backend.dev.devstack

# The suite twice: on SQLite, and on a PostgreSQL the session starts itself (initdb + pg_ctl in a
# temporary directory; skipped, saying why, when PostgreSQL is not installed). The two passes run
# side by side (tests/run_passes.py), since one after the other they take longer than the 15
# minutes this target may take on 2 cores; each waits mostly on processes, not on the CPU. The
# PostgreSQL pass skips what would only repeat the SQLite pass (tests that build no store) and the
# tests about SQLite itself (@pytest.mark.sqlite_only). `make test` fails if either pass fails.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m tests.run_passes

# The chaos scenarios of RELIABILITY.md with more jobs and more kills than in `make test`.
chaos: $(STAMP)
	CHAOS_SOAK=1 $(PY) -m pytest tests/chaos -s

# Benchmarks against raw RQ, a hello-world route and Celery + Flower (installed by the bench into
# its own venv under bench/.cache/), measured in the same run, on SQLite and on a PostgreSQL the run
# starts itself (SQLite only, saying why, when it is not installed); see BENCHMARKS.md. `bench`: the
# ones that check issue 17's targets (under 15 minutes); `bench-all`: every benchmark.
bench: $(STAMP)
	$(PY) -m bench

bench-all: $(STAMP)
	$(PY) -m bench --all

# ruff, then the import contracts of .importlinter (which layer may import which).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
