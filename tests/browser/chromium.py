"""Debian's Chromium under Playwright, and a difflane to point it at (shared by tests and the screenshot script)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.acceptance.conftest import Platform

CHROMIUM = os.environ.get("DIFFLANE_TEST_CHROMIUM", "/usr/bin/chromium")
# Headless as root (CI), and quiet: background networking only meets a closed network here.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The lane's step ceiling sits below the model's, so the form (which knows the model's limits
# from /v1/models) lets 80 steps through and the API answers 422 on `steps`.
LANES = (  # one warm-up shape: the worker is ready sooner
    "lanes:\n  fast: {capacity: cpu, max_batch: 4, max_wait_ms: 20, max_steps: 60, warmup_batches: [1]}\n"
)
LANE_MAX_STEPS = 60


def chromium_path() -> str | None:
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    assert path, "chromium is not installed (scripts/setup installs it with apt-get)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def playground(root: Path, hf_home: Path) -> Platform:
    """``difflane serve`` with one worker on the tiny model, its lane capped at 60 steps."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "lanes.yaml").write_text(LANES)
    p = Platform(root, hf_home, lanes=str(root / "lanes.yaml"))
    p.serve(workers=1)
    return p
