"""Launcher: ``python backend/worker.py --name worker-1 [--queues high,default,low] [--burst]``.

The worker runtime lives in ``backend.runner.worker``; this file keeps the command people type.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python backend/worker.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.runner.worker import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
