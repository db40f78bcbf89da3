"""One difflane and one Chromium for the browser tests; each test gets a fresh page."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import Platform
from tests.browser import chromium

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")  # Playwright keeps an event loop running in this thread while it lives
def browser() -> Iterator[Any]:
    pytest.importorskip("playwright")
    if chromium.chromium_path() is None:
        message = "chromium is not installed (scripts/setup installs it with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)  # a green CI must have run these
        pytest.skip(message)
    with chromium.browser() as b:
        yield b


@pytest.fixture(scope="module")
def playground(tmp_path_factory: pytest.TempPathFactory, tiny_hf_home: Path) -> Iterator[Platform]:
    p = chromium.playground(tmp_path_factory.mktemp("ui"), tiny_hf_home)
    yield p
    p.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)  # generous: CI machines are shared and slow
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_ui(page: Any, playground: Platform, principal: str) -> None:
    """Open /ui acting as ``principal`` (DIFFLANE_AUTH=none: the X-Difflane-Principal header)."""
    page.add_init_script(f"localStorage.setItem('difflane.principal', {principal!r})")
    page.goto(f"{playground.url}/ui/")
    page.wait_for_selector("body[data-ready='1']", state="attached")
