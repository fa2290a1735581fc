"""Headless Chromium for the page tests: Debian's /usr/bin/chromium driven by playwright.

A test module imports ``playwright``, ``pytestmark`` and ``launch`` from here; without
playwright or Chromium its tests skip, saying why.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
requires_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium; .ci/run does)"
)
# This machine's network is closed: without these, Chromium keeps trying to reach Google's hosts.
ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update")


def launch(p, *extra: str):
    """A headless Chromium from a running ``playwright.sync_playwright()``."""
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*ARGS, *extra])
