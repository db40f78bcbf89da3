"""Response headers every answer carries, and a bound on request header size.

- ``X-Content-Type-Options: nosniff``: a browser never guesses an HTML type for our JSON or PNGs;
- ``Content-Security-Policy: frame-ancestors 'none'`` and ``X-Frame-Options: DENY``: no page may
  frame ours (clickjacking of /docs or /ui);
- ``Referrer-Policy: no-referrer``: job ids in our URLs never leak to other sites;
- ``Strict-Transport-Security`` when the request came over https (directly, or through a proxy
  that uvicorn trusts for ``X-Forwarded-Proto``) or the public URL is https;
- ``Cache-Control: no-store`` on every /v1 answer that does not set its own (job JSON, errors):
  one tenant's job must not sit in a shared cache. Outputs keep their own private caching.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from difflane.api.problems import problem

_ALWAYS = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", "frame-ancestors 'none'"),
    ("referrer-policy", "no-referrer"),
)
HSTS = "max-age=31536000; includeSubDomains"


class SecurityHeaders:
    def __init__(self, app: ASGIApp, *, public_https: bool = False) -> None:
        self.app = app
        self.public_https = public_https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = self.public_https or scope.get("scheme") == "https"
        api = str(scope.get("path", "")).startswith("/v1/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _ALWAYS:
                    headers.setdefault(name, value)
                if https:
                    headers.setdefault("strict-transport-security", HSTS)
                if api:
                    headers.setdefault("cache-control", "no-store")
            await send(message)

        await self.app(scope, receive, with_headers)


class HeaderLimit:
    """431 for a request whose line and headers exceed ``limit`` bytes, whatever the server's
    own parser allowed (httptools has no configurable bound)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
            size += sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))
            if size > self.limit:
                response = problem(
                    431, "headers_too_large", f"request line and headers are larger than {self.limit} bytes"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
