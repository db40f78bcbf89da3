"""The API's HTTP server against slow and idle clients (issue 9): a real uvicorn on a socket.

A request head that dribbles in (slowloris) or never comes is cut off at the header timeout;
normal and kept-alive requests are untouched, and no ``server`` banner is sent.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from difflane.api import http_server
from difflane.api.app import create_app
from difflane.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 0.5
GIVE_UP_S = 20.0  # only a failing test gets here


@pytest.fixture(params=["httptools", "h11"])
def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setenv(http_server.HEADER_TIMEOUT_ENV, str(HEADER_TIMEOUT_S))  # restored afterwards
    settings = Settings(store="memory", dispatch="memory", http_header_timeout_seconds=HEADER_TIMEOUT_S)
    options: dict[str, Any] = http_server.uvicorn_options(settings)
    options["http"] = (
        http_server.GuardedHttpToolsProtocol if request.param == "httptools" else http_server.GuardedH11Protocol
    )
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, **options)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + GIVE_UP_S
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    thread.join(10)


def closed_by_server(sock: socket.socket, dribble: bytes | None) -> bool:
    """Send ``dribble`` a byte at a time (or nothing) until the server hangs up, or give up."""
    sock.settimeout(0.1)
    deadline = time.monotonic() + GIVE_UP_S
    position = 0
    while time.monotonic() < deadline:
        try:
            if dribble is not None:
                sock.send(dribble[position % len(dribble) : position % len(dribble) + 1])
                position += 1
            if sock.recv(1024) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def test_a_dribbled_request_head_is_cut_off(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: api\r\n")
        assert closed_by_server(sock, b"X-Slow: aaaaaaaa\r\n")


def test_a_connection_that_sends_nothing_is_closed(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        assert closed_by_server(sock, None)


def test_normal_and_kept_alive_requests_pass_with_no_server_banner(server: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{server}") as c:
        for _ in range(3):  # one connection, kept alive between requests
            r = c.get("/livez")
            assert r.status_code == 200 and "server" not in r.headers
            assert r.headers["x-content-type-options"] == "nosniff"
