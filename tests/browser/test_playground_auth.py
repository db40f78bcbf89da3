"""/ui with authentication on: the page asks for a bearer token and works with one.

Entra-shaped tokens from the local identity provider (tests/oidc_provider.py); the worker runs
the fake runtime, so no model is loaded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.acceptance.conftest import Platform
from tests.oidc_provider import API_CLIENT_ID, TENANT_A, OidcProvider, new_oid

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, OidcProvider]]:
    root = tmp_path_factory.mktemp("ui-auth")
    with OidcProvider() as provider:
        p = Platform(
            root,
            root / "hf",
            runtime="fake",
            auth="entra",
            auth_authority=provider.url,
            auth_audience=API_CLIENT_ID,
            auth_tenants=TENANT_A,
        )
        p.serve(workers=1)
        try:
            yield p, provider
        finally:
            p.close()


def test_the_page_asks_for_a_token_then_submits_with_it(page: Any, secured: tuple[Platform, OidcProvider]) -> None:
    platform, provider = secured
    page.goto(f"{platform.url}/ui/")
    page.wait_for_selector("body[data-ready='1']", state="attached")
    assert page.is_visible("#token") and page.is_hidden("#principal")
    assert "bearer token" in page.text_content("#identity-error")  # the API's 401, where the token goes

    token = provider.token(oid=new_oid())
    page.fill("#token", token)
    page.dispatch_event("#token", "change")
    page.wait_for_function("() => document.querySelector('#model').options.length > 0")
    assert page.text_content("#identity-error") == ""
    assert page.evaluate("() => sessionStorage.getItem('difflane.token')") == token  # this tab only
    page.fill("#prompt", "a fox behind a sign-in")
    page.click("#submit")
    card = page.locator("#active .job").first.element_handle()
    page.wait_for_function("el => el.dataset.state === 'succeeded'", arg=card)
    img = card.query_selector(".images img")
    assert img is not None
    page.wait_for_function("img => img.complete && img.naturalWidth === 64", arg=img)  # fetched with the token

    page.fill("#token", provider.token(oid=new_oid(), exp_in=-120))  # expired
    page.dispatch_event("#token", "change")
    page.wait_for_function("() => document.querySelector('#identity-error').textContent !== ''")
    assert "expired" in page.text_content("#identity-error")
