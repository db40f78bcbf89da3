"""``difflane smoke``: prove a deployment serves end to end, the way a release pipeline asks.

Readiness, the catalog, the smallest job the catalog allows (one image at the model's default
size, its minimum step count), following it to the end, downloading the image and checking it is
the PNG the job describes (size, byte count, SHA-256). Every step is timed and printed; any
failure ends the run with exit code 1 and one line saying which step failed and why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PROMPT = "difflane smoke test: a lighthouse on a cliff"
T = TypeVar("T")


class SmokeFailure(Exception):
    """A step did not hold; the message says what was seen."""


@dataclasses.dataclass(frozen=True)
class ClientCredentials:
    """OAuth 2.0 client credentials (an Entra ID app registration, or any OIDC provider)."""

    token_url: str
    client_id: str
    client_secret: str
    scope: str


@dataclasses.dataclass(frozen=True)
class Options:
    url: str
    token: str | None = None
    model: str | None = None
    ready_timeout_s: float = 60.0  # a fresh rollout may still be warming up
    job_timeout_s: float = 900.0  # a GPU pool scaled to zero needs minutes for its first node
    poll_interval_s: float = 1.0


def client_credentials_token(credentials: ClientCredentials, timeout_s: float = 30.0) -> str:
    """An access token from the provider's token endpoint (RFC 6749 section 4.4)."""
    try:
        response = httpx.post(
            credentials.token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": credentials.client_id,
                "client_secret": credentials.client_secret,
                "scope": credentials.scope,
            },
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise SmokeFailure(f"token endpoint unreachable: {exc}") from exc
    body = _json_or_none(response)
    if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        error = body.get("error", "") if isinstance(body, dict) else ""
        raise SmokeFailure(f"token endpoint answered HTTP {response.status_code} {error}".rstrip())
    token: str = body["access_token"]
    return token


def entra_token_url(tenant_id: str) -> str:
    return f"https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token"


class Smoke:
    def __init__(self, options: Options, say: Callable[[str], None]) -> None:
        self.options = options
        self.say = say
        self.origin = _origin(options.url)
        headers = {"Authorization": f"Bearer {options.token}"} if options.token else {}
        self.http = httpx.Client(base_url=options.url.rstrip("/"), headers=headers, timeout=30.0)

    def close(self) -> None:
        self.http.close()

    def run(self) -> None:
        started = time.monotonic()
        self.step("ready", self.wait_ready)
        model = self.step("catalog", self.pick_model)
        job = self.step("submit", lambda: self.submit(model))
        job = self.step("run", lambda: self.follow(job["id"]))
        self.step("download", lambda: self.download(job))
        self.say(f"smoke: ok, job {job['id']} on model {model['name']} in {time.monotonic() - started:.2f} s")

    def step(self, name: str, action: Callable[[], T]) -> T:
        started = time.monotonic()
        try:
            result = action()
        except httpx.HTTPError as exc:
            raise SmokeFailure(f"{name}: {type(exc).__name__}: {exc}") from exc
        except SmokeFailure as exc:
            raise SmokeFailure(f"{name}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:  # an answer not shaped like difflane's
            raise SmokeFailure(f"{name}: unexpected answer ({type(exc).__name__}: {exc})") from exc
        self.say(f"{name:<9} {time.monotonic() - started:8.2f} s")
        return result

    def wait_ready(self) -> None:
        last = "no answer"
        for _ in _until(self.options.ready_timeout_s, self.options.poll_interval_s):
            try:
                response = self.http.get("/readyz")
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code} {response.text[:200]}"
        raise SmokeFailure(f"not ready within {self.options.ready_timeout_s:g} s ({last})")

    def pick_model(self) -> dict[str, Any]:
        models: list[dict[str, Any]] = _expect(self.http.get("/v1/models"), 200).get("models") or []
        if self.options.model is not None:
            chosen = [m for m in models if m.get("name") == self.options.model]
            if not chosen:
                raise SmokeFailure(f"model {self.options.model!r} is not in the catalog")
            return chosen[0]
        if not models:
            raise SmokeFailure("the catalog is empty")
        cheapest: dict[str, Any] = min(models, key=_job_cost)
        return cheapest

    def submit(self, model: dict[str, Any]) -> dict[str, Any]:
        defaults, limits = model["defaults"], model["limits"]
        body = {
            "model": model["name"],
            "prompt": PROMPT,
            "width": defaults["width"],
            "height": defaults["height"],
            "steps": limits.get("min_steps", 1),
            "num_images": 1,
            "seed": 0,
        }
        # The key makes a retried submit meet the same job instead of making two.
        response = self.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"smoke-{uuid.uuid4()}"})
        return _expect(response, 202)

    def follow(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = {}
        for _ in _until(self.options.job_timeout_s, self.options.poll_interval_s):
            job = _expect(self.http.get(f"/v1/jobs/{job_id}"), 200)
            if job.get("state") in TERMINAL:
                break
        else:
            waited = f"{self.options.job_timeout_s:g} s"
            raise SmokeFailure(f"job {job_id} still {job.get('state')} after {waited} (is a worker serving its lane?)")
        if job["state"] != "succeeded":
            error = job.get("error") or {}
            raise SmokeFailure(
                f"job {job_id} {job['state']}: {error.get('code', '')} {error.get('message', '')}".rstrip()
            )
        if len(job.get("outputs") or []) != 1:
            raise SmokeFailure(f"job {job_id} succeeded with {len(job.get('outputs') or [])} outputs, expected 1")
        return job

    def download(self, job: dict[str, Any]) -> None:
        output = job["outputs"][0]
        url = urljoin(self.origin + "/", output["url"])
        if _origin(url) == self.origin:
            response = self.http.get(url, follow_redirects=False)
        else:  # a signed storage URL: it carries its own authority, so no token goes there
            response = httpx.get(url, timeout=30.0)
        if response.status_code != 200:
            raise SmokeFailure(f"GET {output['url']} answered HTTP {response.status_code}")
        check_png(response.content, width=output["width"], height=output["height"])
        if len(response.content) != output["bytes"]:
            raise SmokeFailure(f"image has {len(response.content)} bytes, the job says {output['bytes']}")
        digest = hashlib.sha256(response.content).hexdigest()
        if digest != output["sha256"]:
            raise SmokeFailure(f"image SHA-256 {digest} differs from the job's {output['sha256']}")


def check_png(data: bytes, *, width: int, height: int) -> None:
    """A PNG whose header (IHDR, the first chunk) says width x height."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        raise SmokeFailure("the image is not a PNG")
    found = struct.unpack(">II", data[16:24])
    if found != (width, height):
        raise SmokeFailure(f"the image is {found[0]}x{found[1]}, the job says {width}x{height}")


def run(options: Options, say: Callable[[str], None] = print) -> int:
    """0 when every step held, 1 otherwise (the failing step is printed)."""
    smoke = Smoke(options, say)
    try:
        smoke.run()
    except SmokeFailure as exc:
        say(f"smoke: FAILED at {exc}")
        return 1
    finally:
        smoke.close()
    return 0


def _job_cost(model: dict[str, Any]) -> tuple[int, str]:
    defaults, limits = model["defaults"], model["limits"]
    return defaults["width"] * defaults["height"] * limits.get("min_steps", 1), model["name"]


def _until(timeout_s: float, interval_s: float) -> Iterator[None]:
    """Yields at least once, then every interval until the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        yield
        if time.monotonic() + interval_s > deadline:
            return
        time.sleep(interval_s)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _expect(response: httpx.Response, status: int) -> dict[str, Any]:
    body = _json_or_none(response)
    if response.status_code != status:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        code = error.get("code", "") if isinstance(error, dict) else ""
        where = f"{response.request.method} {response.request.url.path}"
        raise SmokeFailure(f"{where} answered HTTP {response.status_code} {code}".rstrip())
    if not isinstance(body, dict):
        raise SmokeFailure(f"{response.request.method} {response.request.url.path}: the body is not a JSON object")
    return body
