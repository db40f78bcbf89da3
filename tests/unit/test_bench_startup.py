"""bench/startup.py's bookkeeping: each phase is the first time it was seen, from launch."""

from __future__ import annotations

from pathlib import Path

import httpx
from bench import startup

READY = {"status": "ok", "checks": {"store": "ok", "dispatch": "ok", "blobs": "ok", "workers": "ok"}}


def test_a_later_look_keeps_the_first_time_readyz_was_200(tmp_path: Path) -> None:
    http = httpx.Client(
        base_url="http://api", transport=httpx.MockTransport(lambda request: httpx.Response(200, json=READY))
    )
    seen: dict[str, float] = {"api up": 0.1}
    startup._look(http, tmp_path, seen, t0=0.0, wall0=0.0)
    first = seen["ready"]
    startup._look(http, tmp_path, seen, t0=0.0, wall0=0.0)  # the look after the first image
    assert seen["ready"] == first
