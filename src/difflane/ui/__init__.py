"""The web playground at ``/ui``: static files shipped inside the package, served by the API.

No CDN and no build step: deployments behind private endpoints have no internet, so the page is
plain HTML, CSS and JavaScript that talks to ``/v1`` with the caller's own credentials.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse, RedirectResponse, Response

from difflane.api.context import ApiContext, get_context
from difflane.errors import NotFound

router = APIRouter(prefix="/ui", include_in_schema=False)

# A fixed list, not a path lookup: nothing but these files can ever be served from here.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere; images are blob: URLs (fetched with the caller's
# credentials) or signed https URLs of the result storage.
CSP = (
    "default-src 'self'; img-src 'self' blob: data: https:; connect-src 'self'; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


@router.get("")
async def ui_root() -> Response:
    return RedirectResponse("ui/", status_code=307)  # relative: works behind a path prefix


@router.get("/config.json")
async def ui_config(ctx: Annotated[ApiContext, Depends(get_context)]) -> JSONResponse:
    """What the page needs before it can call the API: whether to ask for a bearer token."""
    return JSONResponse({"auth": ctx.settings.identity.auth}, headers={"Cache-Control": "no-store"})


@router.get("/")
@router.get("/{name}")
async def ui_file(name: str = "index.html") -> Response:
    media_type = FILES.get(name)
    if media_type is None:
        raise NotFound(f"/ui/{name} does not exist", code="not_found")
    headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",  # revalidate: an upgrade must not leave an old script running
    }
    return Response(read(name), media_type=media_type, headers=headers)
