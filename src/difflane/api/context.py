"""Everything a request handler needs, built once per app and kept on ``app.state``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from fastapi.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from difflane.api.auth import Authenticator
from difflane.api.limits import Admission
from difflane.api.service import JobService
from difflane.api.watch import ChangeSignal
from difflane.blobs.base import BlobStore
from difflane.capacity.live import LiveForecaster
from difflane.catalog import Catalog
from difflane.dispatch.base import Dispatcher
from difflane.lanes import Lanes
from difflane.settings import Settings
from difflane.store.base import JobStore
from difflane.webhooks.intake import WebhookIntake


@dataclasses.dataclass
class ApiContext:
    settings: Settings
    store: JobStore
    blobs: BlobStore
    dispatcher: Dispatcher
    catalog: Catalog
    authenticator: Authenticator
    changes: ChangeSignal
    lanes: Lanes | None = None
    admission: Admission | None = None  # limits; None: off
    webhooks: WebhookIntake | None = None  # None: webhooks off
    forecast: LiveForecaster | None = None  # queue ETAs and admission by prediction; None: off
    # True when store calls are local and short (SQLite): run them on the event loop. A hop to
    # a worker thread costs more than the call itself on a busy 2-core machine (GIL hand-offs),
    # and it capped admission at a third of the inline rate. Remote stores use the threadpool.
    inline_store: bool = False
    service: JobService = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.service = JobService(
            self.store,
            self.dispatcher,
            self.catalog,
            self.lanes,
            admission=self.admission,
            webhooks=self.webhooks,
            forecast=self.forecast,
        )

    async def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a store/dispatch call the cheapest safe way (see ``inline_store``)."""
        if self.inline_store:
            return fn(*args, **kwargs)
        return await run_in_threadpool(fn, *args, **kwargs)


P = ParamSpec("P")
R = TypeVar("R")


async def get_context(conn: HTTPConnection) -> ApiContext:
    """A dependency. Async on purpose: FastAPI runs a plain ``def`` dependency in its threadpool,
    and that hop cost every request more than the rest of its dependencies (issue 10)."""
    ctx: ApiContext = conn.app.state.ctx
    return ctx
