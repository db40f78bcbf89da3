"""/ui in headless Chromium against a real ``difflane serve`` on the tiny model."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import Platform
from tests.browser.chromium import LANE_MAX_STEPS
from tests.browser.conftest import open_ui

pytestmark = pytest.mark.browser

# Records every progress label the page shows, so a test can tell it saw intermediate steps
# however fast the job ran.
WATCH_PROGRESS = """() => {
  window.seenProgress = [];
  new MutationObserver(() => {
    for (const el of document.querySelectorAll('#active .progress-label')) window.seenProgress.push(el.textContent);
  }).observe(document.querySelector('#active'), {subtree: true, childList: true, characterData: true});
}"""


def fill(page: Any, **fields: object) -> None:
    for name, value in fields.items():
        page.fill(f"#{name}", str(value))


def active_card(page: Any, state: str) -> Any:
    card = page.locator(f"#active .job[data-state='{state}']").first
    card.wait_for()
    return card


def test_submit_shows_live_progress_then_the_image_and_its_parameters(page: Any, playground: Platform) -> None:
    open_ui(page, playground, "contoso/submitter")
    assert page.input_value("#model") == "tiny"
    assert page.is_visible("#principal") and page.is_hidden("#token")  # DIFFLANE_AUTH=none: no token
    assert "256×256" in page.text_content("#model-limits")  # the model's limits, shown
    assert page.get_attribute("#steps", "max") == "100"  # ... and enforced by the inputs
    page.evaluate(WATCH_PROGRESS)
    fill(page, prompt="a red fox in the snow", width=64, height=64, steps=6, seed=7)
    page.click("#submit")

    card = active_card(page, "succeeded")
    first_id = card.get_attribute("data-job-id")
    card = page.locator(f"#active .job[data-job-id='{first_id}']")  # this card, whatever comes later
    seen = page.evaluate("window.seenProgress")
    steps = {s for s in seen if s.startswith("step ") and s not in ("step 0/6", "step 6/6")}
    assert steps, f"no intermediate step shown: {seen}"
    img = card.locator(".images img").first
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    assert img.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
    assert card.locator("dd[data-param='seed']").text_content() == "7"
    assert card.locator("dd[data-param='model']").text_content() == "tiny"
    assert card.locator("dd[data-param='run']").text_content().endswith(" s")  # timings

    # Run again with this seed: same parameters and seed, so the same PNG.
    card.locator("button.again").first.click()
    page.locator("#active .job").nth(1).wait_for()
    again = page.locator("#active .job").first.element_handle()
    page.wait_for_function("el => el.dataset.state === 'succeeded'", arg=again)
    second_id = again.get_attribute("data-job-id")
    assert second_id != first_id
    headers = {"X-Difflane-Principal": "contoso/submitter"}
    a, b = (playground.http.get(f"/v1/jobs/{i}", headers=headers).json() for i in (first_id, second_id))
    assert (b["seed"], b["steps"], b["width"]) == (7, 6, 64)
    assert a["outputs"][0]["sha256"] == b["outputs"][0]["sha256"]


def test_cancel_stops_a_running_job(page: Any, playground: Platform) -> None:
    open_ui(page, playground, "contoso/canceller")
    fill(page, prompt="a slow one", width=128, height=128, steps=LANE_MAX_STEPS)
    page.click("#submit")
    card = page.locator("#active .job").first
    card.wait_for()
    page.wait_for_function(
        "el => el.dataset.state === 'running' && el.querySelector('progress').value >= 1", arg=card.element_handle()
    )
    card.locator("button.cancel").click()
    page.wait_for_function("el => el.dataset.state === 'cancelled'", arg=card.element_handle())
    assert card.locator("button.cancel").is_hidden()
    assert card.locator(".images img").count() == 0
    job_id = card.get_attribute("data-job-id")
    job = playground.http.get(f"/v1/jobs/{job_id}", headers={"X-Difflane-Principal": "contoso/canceller"}).json()
    assert job["state"] == "cancelled" and job["outputs"] == []
    assert job["progress"]["step"] < LANE_MAX_STEPS


def test_an_api_422_is_shown_next_to_the_field_it_names(page: Any, playground: Platform) -> None:
    open_ui(page, playground, "contoso/mistaken")
    # Within the model's limits (the form lets it through), beyond the lane's (the API refuses).
    fill(page, prompt="too many steps", steps=LANE_MAX_STEPS + 20)
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST") as answer:
        page.click("#submit")
    assert answer.value.status == 422
    error = page.locator(".field-error[data-field='steps']")
    assert f"1..{LANE_MAX_STEPS}" in error.text_content()
    assert page.get_attribute("#steps", "aria-invalid") == "true"
    assert page.text_content("#form-error") == ""

    # A limit the form knows is refused before any request, at the same place.
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if r.method == "POST" else None)
    fill(page, steps=4, width=1024)
    page.click("#submit")
    assert "at most 256" in page.locator(".field-error[data-field='width']").text_content()
    assert page.locator(".field-error[data-field='steps']").text_content() == ""
    assert requests == []


def submit(http: httpx.Client, principal: str, **body: Any) -> str:
    r = http.post(
        "/v1/jobs",
        json={"model": "tiny", "prompt": "a picture", **body},
        headers={"X-Difflane-Principal": principal},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def wait_state(http: httpx.Client, principal: str, job_id: str, state: str) -> None:
    def current() -> str:
        return str(http.get(f"/v1/jobs/{job_id}", headers={"X-Difflane-Principal": principal}).json()["state"])

    deadline = time.monotonic() + 60
    while current() != state:
        assert time.monotonic() < deadline, f"job {job_id} never became {state}"
        time.sleep(0.05)


def gallery_ids(page: Any) -> list[str]:
    cards = page.locator("#gallery .job")
    return [str(cards.nth(i).get_attribute("data-job-id")) for i in range(cards.count())]


def test_gallery_is_the_callers_jobs_newest_first_paged_and_filtered(page: Any, playground: Platform) -> None:
    me = "contoso/gallery"
    made = [submit(playground.http, me, prompt=f"picture {i}", steps=2) for i in range(10)]
    for job_id in made:
        wait_state(playground.http, me, job_id, "succeeded")
    slow = submit(playground.http, me, prompt="cancel me", width=128, height=128, steps=LANE_MAX_STEPS)
    r = playground.http.post(f"/v1/jobs/{slow}/cancel", headers={"X-Difflane-Principal": me})
    assert r.status_code == 202
    wait_state(playground.http, me, slow, "cancelled")
    made.append(slow)
    submit(playground.http, "contoso/someone-else", prompt="not mine", steps=2)
    newest_first = list(reversed(made))

    open_ui(page, playground, me)
    page.locator("#gallery .job").first.wait_for()
    assert gallery_ids(page) == newest_first[:8]  # newest first, a page of 8, only mine
    assert page.is_disabled("#newer") and page.is_enabled("#older")
    page.click("#older")
    page.wait_for_function("() => document.querySelector('#page-label').textContent === 'page 2'")
    assert gallery_ids(page) == newest_first[8:]
    assert page.is_disabled("#older")
    page.click("#newer")
    page.wait_for_function("() => document.querySelector('#page-label').textContent === 'page 1'")
    assert gallery_ids(page) == newest_first[:8]

    page.select_option("#state-filter", "cancelled")
    page.wait_for_function("() => document.querySelectorAll('#gallery .job').length === 1")
    assert gallery_ids(page) == [slow]
    assert page.locator("#gallery .job .state").text_content() == "cancelled"
    page.select_option("#state-filter", "failed")
    page.wait_for_selector("#gallery .empty")
    assert page.text_content("#gallery .empty") == "no failed jobs"
