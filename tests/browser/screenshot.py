"""Take docs/images/ui.png: a real difflane on the tiny model, a few jobs, the page in Chromium.

Run by ``scripts/ui-screenshot`` (not a test). The images are the tiny model's random-weight output.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from difflane.telemetry import logging as log_setup
from tests.acceptance.conftest import Platform
from tests.browser import chromium

PRINCIPAL = "contoso/alice"
PROMPTS = ["a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen", "an old tram in Lisbon"]


def main(target: Path) -> None:
    log_setup.quiet_third_party()
    from difflane.worker.tiny_model import create_tiny

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        create_tiny(root / "hf")
        platform = chromium.playground(root / "ui", root / "hf")
        try:
            headers = {"X-Difflane-Principal": PRINCIPAL}
            for i, prompt in enumerate(PROMPTS):
                body = {"model": "tiny", "prompt": prompt, "seed": 100 + i, "num_images": 1 + i % 2}
                assert platform.http.post("/v1/jobs", json=body, headers=headers).status_code == 202
            wait_until_done(platform, headers, len(PROMPTS))
            with chromium.browser() as browser:
                page = browser.new_page(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
                page.set_default_timeout(180_000)
                page.add_init_script(f"localStorage.setItem('difflane.principal', {PRINCIPAL!r})")
                page.goto(f"{platform.url}/ui/")
                page.wait_for_selector("body[data-ready='1']", state="attached")
                page.fill("#prompt", "a red fox in the snow, watercolour")
                page.fill("#width", "64")
                page.fill("#height", "64")
                page.fill("#steps", "8")
                page.fill("#seed", "42")
                page.click("#submit")
                page.wait_for_selector("#active .job[data-state='succeeded'] img")
                page.click("#refresh")
                page.wait_for_function(
                    "() => [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)"
                    " && document.querySelectorAll('#gallery .job[data-state=\"succeeded\"]').length >= 5"
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(target), full_page=False)
        finally:
            platform.close()
    print(f"wrote {target}", file=sys.stderr)


def wait_until_done(platform: Platform, headers: dict[str, str], count: int) -> None:
    """The jobs submitted over the API have finished (the worker is warm for the page's job)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        page = platform.http.get("/v1/jobs", params={"state": "succeeded"}, headers=headers).json()
        if len(page["jobs"]) >= count:
            return
        time.sleep(0.5)
    raise SystemExit("the jobs did not finish in 10 minutes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/images/ui.png"))
