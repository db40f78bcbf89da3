"""``create_app``: the FastAPI application, from settings and (optionally) ready-made seams."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from difflane import __version__, openai_api, ui, wiring
from difflane.api import auth, limits, problems
from difflane.api.access_log import AccessLog
from difflane.api.auth import Authenticator
from difflane.api.backlog import BacklogRefresher
from difflane.api.context import ApiContext
from difflane.api.feed import ChangeFeed
from difflane.api.headers import HeaderLimit, SecurityHeaders
from difflane.api.routes import docs, events, health, jobs, models
from difflane.api.schemas import Problem
from difflane.api.streams import StreamSlots
from difflane.api.watch import API_ROLE, ChangeSignal
from difflane.capacity import live
from difflane.dispatch.doorbell import Doorbell
from difflane.settings import Settings
from difflane.webhooks import setup as webhook_setup

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
    try:
        hooks = webhook_setup.build(settings, parts.store)
        ctx = ApiContext(
            settings=settings,
            store=parts.store,
            blobs=parts.blobs,
            dispatcher=parts.dispatcher,
            catalog=parts.catalog,
            authenticator=authenticator or auth.from_settings(settings),
            changes=ChangeSignal(),
            inline_store=parts.local_store,
            lanes=parts.lanes,
            admission=limits.from_settings(settings, parts.store, parts.dispatcher),
            webhooks=hooks.intake if hooks else None,
            forecast=live.from_settings(settings, parts.store, parts.lanes),
        )
    except BaseException:
        if owned:  # a configuration error must not leave connections and files open
            parts.close()
        raise

    feed = ChangeFeed(parts.store, ctx.changes, inline=parts.local_store)  # wakes the event streams
    backlog = BacklogRefresher(
        parts.catalog.lanes, parts.dispatcher.backlog, interval_seconds=settings.api.metrics_backlog_refresh_seconds
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx.changes.attach(Doorbell(parts.bell_dir, API_ROLE) if parts.bell_dir else None)
        feed.start()
        if hooks:
            hooks.start(parts.bell_dir)
        backlog.start()
        try:
            yield
        finally:
            backlog.stop()
            await feed.stop()
            ctx.changes.detach()
            if hooks:
                hooks.close()
            if owned:
                parts.close()

    app = FastAPI(
        title="difflane",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # our own /docs, from local assets (routes/docs.py)
        redoc_url=None,  # ReDoc would load from a CDN
    )
    app.state.ctx = ctx
    app.state.backlog = backlog
    app.state.streams = StreamSlots.from_settings(settings)
    app.state.feed = feed
    problems.install(app)
    # Every /v1 route authenticates: each declares its caller with the permission it needs
    # (api/deps.py), checked for every operation by tests/unit/test_auth.py. No router-wide
    # dependency on top: FastAPI solved it again for every request, for nothing.
    refusals: dict[int | str, dict[str, object]] = {401: {"model": Problem}, 403: {"model": Problem}}
    for module in (jobs, events, models):
        app.include_router(module.router, responses=refusals)
    app.include_router(health.router)
    docs.install(app)
    app.include_router(openai_api.router)  # authenticates per route, answers in OpenAI's error shape
    app.include_router(ui.router)  # static files; the page calls /v1 with the caller's credentials
    app.add_middleware(live.Scope, forecaster=ctx.forecast)  # job_json's queue and ETA fields
    app.add_middleware(problems.BodyLimit, limit=settings.api.max_body_bytes)
    app.add_middleware(HeaderLimit, limit=settings.api.http_max_header_bytes)
    # Every answer, refusals by the limits above included, carries these headers.
    app.add_middleware(SecurityHeaders, public_https=(settings.api.public_url or "").startswith("https://"))
    # Outermost: every request gets its id, its access line and its metrics, refusals included.
    app.add_middleware(AccessLog)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for API processes started by uvicorn itself (``--api-workers`` > 1)."""
    from difflane import settings as settings_mod
    from difflane.telemetry import logging as log_setup

    settings = settings_mod.load()
    log_setup.setup(settings.logging.log_level, settings.logging.log_format, buffered=True)
    from difflane.telemetry import tracing

    tracing.setup("difflane-api")  # FastAPI's own telemetry makes the request spans
    return create_app(settings)
