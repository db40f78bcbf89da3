"""/ui serves the playground's files from the package, and nothing else."""

from __future__ import annotations

from fastapi.testclient import TestClient

from difflane.api.app import create_app
from difflane.settings import Settings
from tests.unit.conftest import Platform


def test_the_page_and_its_assets_come_from_the_package(platform: Platform) -> None:
    r = platform.client.get("/ui", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "ui/"
    page = platform.client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "https://" not in page.text  # nothing from a CDN
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = platform.client.get(f"/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert "https://" not in r.text


def test_only_the_listed_files_are_served(platform: Platform) -> None:
    for path in ("/ui/__init__.py", "/ui/..%2F__init__.py", "/ui/static", "/ui/nope.js"):
        r = platform.client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path


def test_the_page_learns_whether_to_ask_for_a_token(platform: Platform) -> None:
    assert platform.client.get("/ui/config.json").json() == {"auth": "none"}
    settings = Settings(
        store="memory",
        dispatch="memory",
        auth="oidc",
        auth_issuer="https://issuer.example",
        auth_audience=["api://difflane"],
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/ui/config.json").json() == {"auth": "oidc"}
