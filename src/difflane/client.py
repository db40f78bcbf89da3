"""A small HTTP client for the difflane API: what ``difflane generate`` and ``difflane jobs`` use.

``Client`` speaks the /v1 routes; ``ApiError`` carries the API's error code, and ``explain``
turns any of them into a message a person can act on.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

RECONNECT_ATTEMPTS = 5
TERMINAL = ("succeeded", "failed", "cancelled")

# Request fields → the flag of `difflane generate` that sets them, for 422 messages.
FLAGS = {
    "prompt": "PROMPT",
    "negative_prompt": "--negative",
    "width": "--width",
    "height": "--height",
    "steps": "--steps",
    "guidance_scale": "--guidance-scale",
    "seed": "--seed",
    "num_images": "--num-images",
    "model": "--model",
}


class ClientError(Exception):
    """Anything that stops a client command; ``str()`` is the message to print."""


class ApiError(ClientError):
    def __init__(self, status: int, code: str, message: str, field: str | None = None, retry_after: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.retry_after = status, code, message, field, retry_after

    def __str__(self) -> str:
        return explain(self)


def explain(error: ApiError) -> str:
    """One line (two with a hint) for any error the API answers, by status class and code."""
    flag = FLAGS.get(error.field or "")
    text = f"{flag}: {error.message}" if flag and error.status == 422 else error.message
    text = f"{text} [{error.code}]"
    wait = f" Retry in {error.retry_after} s." if error.retry_after else ""
    hints = {
        401: "The API needs a bearer token: set DIFFLANE_CLIENT_TOKEN (docs/howto/entra-id.md: az account "
        "get-access-token).",
        403: "Your token lacks the permission; ask for the app role or scope it names.",
        413: "The request body is too large.",
        429: f"Over a limit.{wait}",
        503: f"The API cannot reach its storage or queue right now.{wait}",
    }
    hint = hints.get(error.status)
    if error.code == "job_not_found":
        hint = "No such job, or it belongs to someone else."
    return f"{text}\n  {hint}" if hint else text


class Client:
    def __init__(self, api_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.api_url = api_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.api_url, headers=headers, timeout=httpx.Timeout(timeout, read=None))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, expected: int = 200, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc
        return parse(response, expected)

    def unreachable(self, exc: Exception) -> ClientError:
        return ClientError(
            f"cannot reach the API at {self.api_url} ({exc.__class__.__name__}).\n"
            "  Is `difflane serve` running? Point at another with --api-url or DIFFLANE_API_URL."
        )

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Submit once; 429/503 with a short Retry-After are retried under the same Idempotency-Key."""
        headers = {"Idempotency-Key": str(uuid.uuid4())}  # a retried submit never makes two jobs
        for attempt in range(RECONNECT_ATTEMPTS):
            try:
                return self.request("POST", "/v1/jobs", 202, json=body, headers=headers)
            except ApiError as exc:
                wait = float(exc.retry_after) if exc.retry_after and exc.retry_after.isdigit() else 1.0
                # A long wait (a rate limit) is reported instead of sat through.
                if exc.status not in (429, 503) or attempt + 1 == RECONNECT_ATTEMPTS or wait > 30:
                    raise
                time.sleep(wait)
        raise AssertionError("unreachable")

    def get(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}")

    def list(self, state: str | None = None, cursor: str | None = None, limit: int = 20) -> dict[str, Any]:
        params: dict[str, str | int] = {"limit": limit}
        if state:
            params["state"] = state
        if cursor:
            params["cursor"] = cursor
        return self.request("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel", 202)

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) until the job's final state, resuming with Last-Event-ID when the stream breaks."""
        last_id: str | None = None
        for _ in range(RECONNECT_ATTEMPTS):
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                for event_id, event, data in self._stream(f"/v1/jobs/{job_id}/events", headers):
                    last_id = event_id or last_id
                    if event == "error":
                        raise ApiError(503, data.get("code", "unavailable"), data.get("message", "event stream error"))
                    yield event, data
                    if event == "state" and data["state"] in TERMINAL:
                        return
            except httpx.TransportError:
                time.sleep(1)
        # The stream kept breaking: read the job once instead.
        yield "state", self.get(job_id)

    def _stream(self, url: str, headers: dict[str, str]) -> Iterator[tuple[str | None, str, Any]]:
        with self.http.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                parse(response, 200)
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

    def download(self, url: str, path: Path) -> None:
        """Stream one output to ``path`` (via a .part file, so a broken download leaves no PNG)."""
        try:
            with self.http.stream("GET", url, follow_redirects=True) as response:
                if response.status_code != 200:
                    response.read()
                    parse(response, 200)
                tmp = path.with_name(path.name + ".part")
                with open(tmp, "wb") as f:
                    for chunk in response.iter_bytes():
                        f.write(chunk)
                tmp.replace(path)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc


def parse(response: httpx.Response, expected: int) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code != expected:
        error = data.get("error") if isinstance(data, dict) else None
        error = error if isinstance(error, dict) else {}
        raise ApiError(
            response.status_code,
            str(error.get("code", f"http_{response.status_code}")),
            str(error.get("message", response.text[:200] or response.reason_phrase)),
            error.get("field"),
            response.headers.get("Retry-After"),
        )
    if not isinstance(data, dict):
        raise ClientError(f"unexpected response from {response.url}: not a JSON object")
    return data


def output_paths(job: dict[str, Any], output: Path | None, output_dir: Path | None) -> list[Path]:
    """Where a job's images go: ``-o FILE`` (FILE-0.png, FILE-1.png… for several) or ``DIR/<id>-<i>.png``."""
    count = len(job["outputs"])
    if output is None:
        folder = output_dir or Path()
        return [folder / f"{job['id']}-{o['index']}.png" for o in job["outputs"]]
    if output_dir is not None:
        output = output_dir / output
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]
