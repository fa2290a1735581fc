"""``python -m backend <command>``: see backend/cli.py."""

from backend.cli import main

main(prog_name="python -m backend")
