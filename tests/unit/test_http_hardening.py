"""Security headers, no-store job JSON, header size, and /docs with no external host (issue 9)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from fastapi.testclient import TestClient

from difflane.api.app import create_app
from difflane.settings import Settings

TINY = {"model": "tiny", "prompt": "a red fox"}


def client(**overrides: object) -> TestClient:
    return TestClient(create_app(Settings(store="memory", dispatch="memory", **overrides)))  # type: ignore[arg-type]


def test_every_answer_carries_the_security_headers_and_job_json_is_no_store() -> None:
    c = client()
    job = c.post("/v1/jobs", json=TINY)
    for r in (job, c.get(f"/v1/jobs/{job.json()['id']}"), c.get("/v1/jobs"), c.get("/v1/jobs/nope"), c.get("/livez")):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "strict-transport-security" not in r.headers  # plain http: HSTS would be ignored
    for r in (job, c.get(f"/v1/jobs/{job.json()['id']}"), c.get("/v1/jobs"), c.get("/v1/jobs/nope")):
        assert r.headers["cache-control"] == "no-store", r.url


def test_hsts_over_https() -> None:
    r = TestClient(create_app(Settings(store="memory", dispatch="memory")), base_url="https://api.test").get("/livez")
    assert r.headers["strict-transport-security"].startswith("max-age=")
    r = client(public_url="https://difflane.example").get("/livez")
    assert "strict-transport-security" in r.headers


def test_oversized_headers_are_431() -> None:
    r = client(http_max_header_bytes=4096).get("/livez", headers={"x-big": "a" * 5000})
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_docs_are_served_from_the_platform_and_reference_no_external_host() -> None:
    c = client()
    r = c.get("/docs")
    assert r.status_code == 200 and "SwaggerUIBundle" in r.text
    parser = _Refs()
    parser.feed(r.text)
    assert parser.refs, "the page loads its assets"
    for ref in parser.refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref  # same origin only
        assert c.get(ref).status_code == 200, ref
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", r.text, re.IGNORECASE)  # no host anywhere
    assert c.get("/redoc").status_code == 404  # ReDoc would come from a CDN
