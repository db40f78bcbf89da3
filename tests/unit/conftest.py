"""An in-process platform on the in-memory fakes: API (TestClient) + one worker thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from difflane import wiring
from difflane.api.app import create_app
from difflane.settings import Settings
from difflane.testing import FakeRuntime
from difflane.worker.assembly import build_worker
from difflane.worker.consumer import Worker
from difflane.worker.executor import WorkerConfig


@dataclass
class Platform:
    client: TestClient
    parts: wiring.Components
    runtime: FakeRuntime
    worker: Worker | None = None
    thread: threading.Thread | None = None

    def start_worker(self, *, lease_seconds: float = 5.0, max_attempts: int = 3) -> Worker:
        config = WorkerConfig(
            "test-worker", lease_seconds=lease_seconds, max_attempts=max_attempts, retry_backoff_seconds=0.01
        )
        self.worker = build_worker(self.parts, self.runtime, ["fast"], config, grace_seconds=1.0)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()
        return self.worker

    def stop_worker(self) -> None:
        if self.worker and self.thread:
            self.worker.request_stop()
            self.thread.join(timeout=10)


@pytest.fixture
def platform() -> Iterator[Platform]:
    settings = Settings(store="memory", dispatch="memory")
    parts = wiring.build(settings)
    app = create_app(settings, components=parts)
    with TestClient(app) as client:
        p = Platform(client, parts, FakeRuntime(step_seconds=0.002))
        yield p
        p.stop_worker()
