"""The Azure shape in one process: records and results in Blob Storage (Azurite), dispatch by
Service Bus (the SDK-shaped fake), an API and a worker that share nothing but the services.

Built the way ``wiring._azure`` builds it (the store, result store and outbox from
``wiring.azure_store``; the Service Bus adapter behind the outbox), with the fake namespace's
clients in place of the SDK's. The API and the worker each get their own store objects, as two
processes would: nothing one caches helps the other.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any

from fastapi.testclient import TestClient

from difflane import catalog as catalog_mod
from difflane import wiring
from difflane.api.app import create_app
from difflane.catalog import ModelSpec
from difflane.dispatch.servicebus import ServiceBusDispatcher, ServiceBusWorkSource, queue_names
from difflane.dispatch.sweeper import OutboxDispatcher, Sweeper
from difflane.settings import Settings
from difflane.testing import FakeRuntime
from difflane.worker.assembly import build_executor
from difflane.worker.executor import Executor, WorkerConfig
from difflane.worker.runtime import RenderedImage, RenderTask, Runtime, StepCallback
from tests import azurite
from tests.fakes.servicebus import FakeAutoLockRenewer, FakeServiceBusNamespace
from tests.operations import Ledger, count_servicebus

LOCK_S = 60.0  # the queues' lock duration in infra/modules/servicebus.bicep (PT1M)


@dataclasses.dataclass
class Shape:
    settings: Settings
    namespace: FakeServiceBusNamespace
    api: wiring.Components
    worker: wiring.Components

    def executor(self, runtime: Runtime, **config: Any) -> Executor:
        values: dict[str, Any] = {"lease_seconds": self.settings.backends.lease_seconds, **config}
        return build_executor(self.worker, runtime, WorkerConfig("worker-1", **values))

    def close(self) -> None:
        self.api.close()
        self.worker.close()


def settings(**changes: Any) -> Settings:
    values: dict[str, Any] = {
        "dispatch": "servicebus",
        "servicebus_namespace": "example.servicebus.windows.net",  # never reached: the fake serves
        "azure_sweep_seconds": 0,  # the sweeper's period is its own cost, counted apart
        **changes,
    }
    return azurite.settings(**values)


def build(s: Settings, ledger: Ledger | None = None, *, lock_s: float = LOCK_S) -> Shape:
    catalog = catalog_mod.load(s.paths.catalog)
    ns = FakeServiceBusNamespace(lock_duration=lock_s)
    names = queue_names(s.servicebus.servicebus_queue_prefix)
    for lane in catalog.lanes():
        ns.create_queue(names(lane))

    def counted(client: Any, side: str) -> Any:
        return count_servicebus(client, ledger, side) if ledger is not None else client

    store, blobs, outbox = wiring.azure_store(s)
    inner = ServiceBusDispatcher(
        counted(ns.client(), "api"), names, admin=counted(ns.admin(), "api"), running=store.running
    )
    sweeper = Sweeper(store, outbox, inner.dispatch, interval_s=s.azure.azure_sweep_seconds)
    api = wiring.Components(store, blobs, OutboxDispatcher(inner, outbox, sweeper), None, catalog)

    w_store, w_blobs, _ = wiring.azure_store(s.model_copy(update={"azure_create_container": False}))
    source = ServiceBusWorkSource(
        counted(ns.client(), "worker"),
        names,
        FakeAutoLockRenewer(ns),
        max_lock_renewal_s=s.servicebus.servicebus_max_lock_renewal_seconds,
    )
    moves = ServiceBusDispatcher(counted(ns.client(), "worker"), names)  # a worker's dispatcher moves jobs
    worker = wiring.Components(w_store, w_blobs, moves, source, catalog)
    return Shape(s, ns, api, worker)


# --- one job, submit to download, with a client on its event stream ------------------------------


class PhasedRuntime(FakeRuntime):
    """The fake runtime, telling the ledger where the executor is: loading follows the claim,
    steps follow loading, the upload and the final write follow the render."""

    def __init__(self, ledger: Ledger, step_seconds: float) -> None:
        super().__init__(step_seconds=step_seconds)
        self.ledger = ledger
        self.render_seconds = 0.0

    def load(self, model: ModelSpec) -> float:
        self.ledger.phase = "progress"
        return super().load(model)

    def render(self, task: RenderTask, on_step: StepCallback, timeout: float | None = None) -> list[RenderedImage]:
        started = time.monotonic()
        try:
            return super().render(task, on_step, timeout)
        finally:
            self.render_seconds = time.monotonic() - started
            self.ledger.phase = "finish"


@dataclasses.dataclass
class Run:
    job_id: str
    outcome: str
    render_seconds: float
    stream_seconds: float
    events: dict[str, int]


def one_job(shape: Shape, ledger: Ledger, *, steps: int, step_seconds: float, idle_seconds: float = 0.0) -> Run:
    """Phases in ``ledger``: submit, stream-open, claim, progress, finish, after, download, then
    probe (one /readyz on an API idle for a second), backlog (one refresh round) and idle (the
    worker's receive loop for ``idle_seconds``)."""
    runtime = PhasedRuntime(ledger, step_seconds)
    executor = shape.executor(runtime)
    stream: dict[str, Any] = {}
    with TestClient(create_app(shape.settings, components=shape.api)) as client:
        ledger.phase = "submit"
        submitted = client.post("/v1/jobs", json={"model": "tiny", "prompt": "a red fox", "steps": steps})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        ledger.phase = "stream-open"
        opened = threading.Event()
        reader = threading.Thread(target=_follow, args=(client, job_id, opened, stream), name="stream-client")
        reader.start()
        assert opened.wait(10), "the event stream did not start"

        def work() -> None:
            ledger.phase = "claim"
            assert shape.worker.source is not None
            delivery = shape.worker.source.receive(["fast"], 5)
            assert delivery is not None
            stream["outcome"] = executor.execute(delivery).value
            ledger.phase = "after"

        worker = threading.Thread(target=work, name="worker-1")
        worker.start()
        worker.join(120)
        reader.join(30)
        ledger.phase = "download"
        image = client.get(f"/v1/jobs/{job_id}/outputs/0")
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        time.sleep(1.1)  # a probe on an API that has not just talked to the store (azure_io.PING_FRESH_S)
        ledger.phase = "probe"
        assert client.get("/readyz").status_code == 200
        ledger.phase = "backlog"
        client.app.state.backlog.refresh()  # type: ignore[attr-defined]
        if idle_seconds:
            ledger.phase = "idle"
            source = shape.worker.source
            assert source is not None
            idle = threading.Thread(target=lambda: source.receive(["fast"], idle_seconds), name="worker-idle")
            idle.start()
            idle.join()
        ledger.phase = "done"
    return Run(job_id, stream.get("outcome", ""), runtime.render_seconds, stream["seconds"], stream["events"])


def _follow(client: TestClient, job_id: str, opened: threading.Event, out: dict[str, Any]) -> None:
    started = time.monotonic()
    events: collections.Counter[str] = collections.Counter()
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events[kind] += 1
                opened.set()
    out["seconds"] = time.monotonic() - started
    out["events"] = dict(events)
