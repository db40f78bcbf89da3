"""`difflane serve` at its default log level: one access line per request, none lost at shutdown."""

from __future__ import annotations

import json
from pathlib import Path

from tests.acceptance.conftest import Platform


def test_every_request_leaves_one_access_line_even_the_last_ones_before_sigterm(tmp_path: Path) -> None:
    platform = Platform(tmp_path, tmp_path / "hf")  # no worker: no model needed
    proc = platform.serve(workers=0)
    try:
        answers = [
            platform.http.post(
                "/v1/jobs", json={"model": "tiny", "prompt": f"fox {i}"}, headers={"X-Request-ID": f"r{i}"}
            )
            for i in range(50)
        ]
    finally:
        proc.stop()  # SIGTERM at once: the last lines are still in the buffer
        platform.http.close()
    lines = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    submits = [e for e in lines if e.get("logger") == "difflane.access" and e.get("route") == "/v1/jobs"]
    assert [e["request_id"] for e in submits] == [f"r{i}" for i in range(50)]
    assert [e["job_id"] for e in submits] == [a.json()["id"] for a in answers]
    assert all(e["status"] == 202 and e["method"] == "POST" and e["model"] == "tiny" for e in submits)
    assert [a.headers["x-request-id"] for a in answers] == [f"r{i}" for i in range(50)]
