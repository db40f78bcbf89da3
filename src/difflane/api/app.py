"""``create_app``: the FastAPI application, from settings and (optionally) ready-made seams."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from difflane import __version__, wiring
from difflane.api import problems
from difflane.api.auth import Authenticator, DevAuthenticator
from difflane.api.context import ApiContext
from difflane.api.routes import events, health, jobs, models
from difflane.api.watch import API_ROLE, ChangeSignal
from difflane.dispatch.doorbell import Doorbell
from difflane.settings import Settings
from difflane.telemetry import metrics

DESCRIPTION = """Submit image-generation jobs, follow them, and fetch their results.

Every error is `{"error": {"code": ..., "message": ...}}` with a machine-readable `code`."""


def create_app(
    settings: Settings,
    *,
    components: wiring.Components | None = None,
    authenticator: Authenticator | None = None,
) -> FastAPI:
    owned = components is None
    parts = components or wiring.build(settings)
    ctx = ApiContext(
        settings=settings,
        store=parts.store,
        blobs=parts.blobs,
        dispatcher=parts.queue,
        catalog=parts.catalog,
        authenticator=authenticator or DevAuthenticator(),
        changes=ChangeSignal(),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.changes.attach(Doorbell(parts.bell_dir, API_ROLE) if parts.bell_dir else None)
        try:
            yield
        finally:
            ctx.changes.detach()
            if owned:
                parts.close()

    app = FastAPI(title="difflane", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.ctx = ctx
    problems.install(app)
    for module in (jobs, events, models, health):
        app.include_router(module.router)
    app.middleware("http")(_count_requests)
    app.add_middleware(problems.BodyLimit, limit=settings.max_body_bytes)
    return app


async def _count_requests(request: Request, call_next) -> Response:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    response: Response = await call_next(request)
    route = request.scope.get("route")
    template = getattr(route, "path", "unmatched")
    metrics.HTTP_REQUESTS.labels(request.method, template, str(response.status_code)).inc()
    response.headers.setdefault("Server-Timing", f"app;dur={(time.perf_counter() - started) * 1000:.1f}")
    return response
