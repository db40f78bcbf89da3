"""A small HTTP client for ``difflane generate``: submit, follow the event stream, download."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

RECONNECT_ATTEMPTS = 5


class ClientError(Exception):
    pass


def generate(api_url: str, body: dict[str, Any], output: Path, *, token: str | None = None) -> int:
    """Returns a process exit code: 0 written, 1 the job failed or was cancelled, 3 API error."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}  # a retried submit never makes two jobs
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=httpx.Timeout(30.0, read=None)) as http:
        try:
            job = _submit(http, body)
            _err(
                f"job {job['id']} accepted ({job['model']}, {job['width']}x{job['height']}, "
                f"{job['steps']} steps, seed {job['seed']})"
            )
            try:
                job = _follow(http, job)
            except KeyboardInterrupt:
                http.post(f"/v1/jobs/{job['id']}/cancel")
                _err("\ncancel requested")
                return 130
        except (ClientError, httpx.HTTPError) as exc:
            _err(f"difflane: {exc}")
            return 3
        if job["state"] != "succeeded":
            error = job.get("error") or {}
            _err(f"job {job['state']}: {error.get('code', '')} {error.get('message', '')}".rstrip())
            return 1
        for path, out in zip(_output_paths(output, len(job["outputs"])), job["outputs"], strict=True):
            _download(http, out["url"], path)
            _err(f"wrote {path} ({out['width']}x{out['height']}, seed {out['seed']})")
    return 0


def _submit(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    for attempt in range(RECONNECT_ATTEMPTS):
        response = http.post("/v1/jobs", json=body)
        retry_after = response.headers.get("Retry-After", "1")
        wait = float(retry_after) if retry_after.isdigit() else 1.0
        # 503: the API is down; 429: over a limit. The Idempotency-Key makes a retry safe; a long
        # wait (a rate limit) is reported instead of sat through.
        if response.status_code in (429, 503) and attempt + 1 < RECONNECT_ATTEMPTS and wait <= 30:
            time.sleep(wait)
            continue
        return _json(response, 202)
    raise ClientError("the API stayed unavailable")


def _follow(http: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    last_id: str | None = None
    for _ in range(RECONNECT_ATTEMPTS):
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            for event_id, event, data in _events(http, f"/v1/jobs/{job['id']}/events", headers):
                last_id = event_id or last_id
                if event == "progress":
                    _bar(data["step"], data["total"])
                elif event == "state":
                    job = data
                    if job["state"] == "running" and job["progress"]["step"] == 0:
                        _bar(0, job["progress"]["total"])
                    if job["state"] in ("succeeded", "failed", "cancelled"):
                        _err("")
                        return job
                elif event == "error":
                    raise ClientError(data.get("message", "event stream error"))
        except httpx.TransportError:
            time.sleep(1)
    # The stream kept breaking: fall back to reading the job.
    return _json(http.get(f"/v1/jobs/{job['id']}"), 200)


def _events(http: httpx.Client, url: str, headers: dict[str, str]) -> Iterator[tuple[str | None, str, Any]]:
    with http.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            response.read()
            _json(response, 200)
        event_id: str | None = None
        event, data = "message", list[str]()
        for line in response.iter_lines():
            if not line:
                if data:
                    yield event_id, event, json.loads("\n".join(data))
                event, data = "message", []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "id":
                    event_id = value
                elif name == "event":
                    event = value
                elif name == "data":
                    data.append(value)


def _download(http: httpx.Client, url: str, path: Path) -> None:
    with http.stream("GET", url, follow_redirects=True) as response:
        if response.status_code != 200:
            response.read()
            _json(response, 200)
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as f:
            for chunk in response.iter_bytes():
                f.write(chunk)
        tmp.replace(path)


def _output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def _json(response: httpx.Response, expected: int) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code != expected:
        error = (data or {}).get("error", {}) if isinstance(data, dict) else {}
        raise ClientError(f"HTTP {response.status_code} {error.get('code', '')}: {error.get('message', response.text)}")
    if not isinstance(data, dict):
        raise ClientError("unexpected response body")
    return data


def _bar(step: int, total: int, width: int = 30) -> None:
    filled = int(width * step / total) if total else width
    sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] step {step}/{total}")
    sys.stderr.flush()


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
