"""``python -m jobservice_client``: the command line (jobservice_client/cli.py)."""

from __future__ import annotations

import sys

from jobservice_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
