"""Event streams against a greedy or expired caller (issue 9), on a real uvicorn socket: a
principal's open streams are capped, and a stream ends when the caller's token expires."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.requests import HTTPConnection

from difflane.api.app import create_app
from difflane.api.auth import Authenticator
from difflane.auth.caller import READ, SUBMIT, Caller
from difflane.jobs import Principal
from difflane.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration

TINY = {"model": "tiny", "prompt": "a red fox"}
GIVE_UP_S = 20.0


class ShortLivedTokens:
    """Every request carries a token that expires ``lifetime`` seconds after it was checked."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime

    async def authenticate(self, conn: HTTPConnection) -> Caller:
        return Caller(Principal("acme", "u1"), frozenset({SUBMIT, READ}), expires_at=time.time() + self.lifetime)


def serve(settings: Settings, authenticator: Authenticator | None = None) -> Iterator[str]:
    port = free_port()
    app = create_app(settings, authenticator=authenticator)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + GIVE_UP_S
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def capped() -> Iterator[str]:
    yield from serve(Settings(store="memory", dispatch="memory", limit_event_streams=2))


@pytest.fixture
def expiring() -> Iterator[str]:
    yield from serve(Settings(store="memory", dispatch="memory"), ShortLivedTokens(lifetime=0.8))


def test_a_principal_may_hold_only_so_many_streams(capped: str) -> None:
    alice = {"X-Difflane-Principal": "acme/alice"}
    with httpx.Client(base_url=capped, timeout=GIVE_UP_S) as c:
        job_id = c.post("/v1/jobs", json=TINY, headers=alice).json()["id"]  # queued: no worker runs
        url = f"/v1/jobs/{job_id}/events"
        with c.stream("GET", url, headers=alice) as one, c.stream("GET", url, headers=alice) as two:
            assert one.status_code == two.status_code == 200
            third = c.get(url, headers=alice)
            assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_streams"
            assert int(third.headers["retry-after"]) > 0
            bob = c.post("/v1/jobs", json=TINY, headers={"X-Difflane-Principal": "acme/bob"}).json()["id"]
            with c.stream("GET", f"/v1/jobs/{bob}/events", headers={"X-Difflane-Principal": "acme/bob"}) as other:
                assert other.status_code == 200  # another principal has slots of its own
        # Closed streams give their slots back.
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            with c.stream("GET", url, headers=alice) as again:
                if again.status_code == 200:
                    break
            time.sleep(0.05)
        assert again.status_code == 200


def test_a_stream_ends_when_the_token_expires(expiring: str) -> None:
    lines: list[str] = []
    with httpx.Client(base_url=expiring, timeout=GIVE_UP_S) as c:
        job_id = c.post("/v1/jobs", json=TINY).json()["id"]

        def read() -> Any:
            with c.stream("GET", f"/v1/jobs/{job_id}/events") as r:
                lines.extend(r.iter_lines())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(GIVE_UP_S)
        assert not reader.is_alive(), "the stream outlived the token"
    assert "event: error" in lines and any('"token_expired"' in line for line in lines)
