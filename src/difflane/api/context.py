"""Everything a request handler needs, built once per app and kept on ``app.state``."""

from __future__ import annotations

import dataclasses

from starlette.requests import HTTPConnection

from difflane.api.auth import Authenticator
from difflane.api.service import JobService
from difflane.api.watch import ChangeSignal
from difflane.blobs.base import BlobStore
from difflane.catalog import Catalog
from difflane.dispatch.base import Dispatcher
from difflane.settings import Settings
from difflane.store.base import JobStore


@dataclasses.dataclass
class ApiContext:
    settings: Settings
    store: JobStore
    blobs: BlobStore
    dispatcher: Dispatcher
    catalog: Catalog
    authenticator: Authenticator
    changes: ChangeSignal
    service: JobService = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.service = JobService(self.store, self.dispatcher, self.catalog)


def get_context(conn: HTTPConnection) -> ApiContext:
    ctx: ApiContext = conn.app.state.ctx
    return ctx
