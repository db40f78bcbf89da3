"""`difflane smoke` against the embedded platform started as a process (`difflane serve`, Entra
tokens from the local provider, the fake runtime so no torch loads): it passes on a healthy
deployment, with a token file or with client credentials, and fails with exit code 1 and the
failing step named when readiness, the token, the job or the image does not hold."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from difflane import smoke
from difflane.catalog import TINY_REPO, TINY_REVISION
from tests.acceptance.conftest import Platform, base_env
from tests.conftest import free_port
from tests.oidc_provider import API_CLIENT_ID, TENANT_A, OidcProvider, new_oid

pytestmark = pytest.mark.acceptance

CATALOG = f"""
models:
  tiny: {{source: {TINY_REPO}, revision: {TINY_REVISION}, pipeline: stable-diffusion, lane: fast,
          defaults: {{width: 64, height: 64, steps: 3}}}}
  big: {{source: {TINY_REPO}, revision: {TINY_REVISION}, pipeline: stable-diffusion, lane: fast,
         defaults: {{width: 128, height: 128, steps: 3}}}}
  parked: {{source: {TINY_REPO}, revision: {TINY_REVISION}, pipeline: stable-diffusion, lane: long,
            defaults: {{width: 72, height: 72, steps: 3}}}}
"""
CLIENT_ID = "eeeeeeee-0000-4000-8000-0000000000e5"
CLIENT_SECRET = "a-client-secret-for-this-test-only"


class TokenEndpoint:
    """Entra's token endpoint for the client credentials grant: a form POST, a JSON answer, and
    401 invalid_client for a wrong secret (what login.microsoftonline.com answers)."""

    def __init__(self, provider: OidcProvider) -> None:
        self.provider = provider
        self.forms: list[dict[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{TENANT_A}/oauth2/v2.0/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                form = {k: v[0] for k, v in parse_qs(raw).items()}
                endpoint.forms.append(form)
                good = (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) == (
                    "client_credentials",
                    CLIENT_ID,
                    CLIENT_SECRET,
                )
                if good:  # an app-only token: roles, no scp
                    token = endpoint.provider.token(oid=new_oid(), scp=None, roles=["Jobs.Submit", "Jobs.Read"])
                    self._answer(200, {"token_type": "Bearer", "expires_in": 3599, "access_token": token})
                else:
                    self._answer(401, {"error": "invalid_client", "error_description": "AADSTS7000215"})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with OidcProvider() as p:
        yield p


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, provider: OidcProvider) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("smoke")
    (root / "catalog.yaml").write_text(CATALOG)
    (root / "lanes.yaml").write_text("lanes:\n  fast: {}\n  long: {}\n")
    p = Platform(
        root / "p",
        root / "hf",
        runtime="fake",
        catalog=str(root / "catalog.yaml"),
        lanes=str(root / "lanes.yaml"),
        auth="entra",
        auth_authority=provider.url,
        auth_audience=f"{API_CLIENT_ID},api://difflane",
        auth_tenants=TENANT_A,
        worker_lanes="fast",  # nobody serves "long": the parked model's jobs never start
    )
    p.root.mkdir(parents=True)
    p.serve(workers=1)
    yield p
    p.close()


def run_smoke(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    env = base_env(platform.data_dir, platform.hf_home)
    return subprocess.run(
        [sys.executable, "-m", "difflane", "smoke", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_smoke_passes_with_a_token_file(platform: Platform, provider: OidcProvider, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(provider.token(oid=new_oid()) + "\n")  # as `az account get-access-token` writes it
    result = run_smoke(platform, "--url", platform.url, "--token-file", str(token))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["ready", "catalog", "submit", "run", "download"]
    assert all(line.split()[-1] == "s" for line in lines[:-1])  # each step timed
    # The cheapest job of the catalog: the 64x64 model, not the 72x72 or 128x128 ones.
    assert lines[-1].startswith("smoke: ok, job ") and "on model tiny" in lines[-1]


def test_smoke_passes_with_client_credentials(platform: Platform, provider: OidcProvider, tmp_path: Path) -> None:
    endpoint = TokenEndpoint(provider)
    secret = tmp_path / "secret"
    secret.write_text(CLIENT_SECRET)
    try:
        args = ["--url", platform.url, "--client-id", CLIENT_ID, "--client-secret-file", str(secret)]
        result = run_smoke(platform, *args, "--token-url", endpoint.url, "--scope", "api://difflane/.default")
        assert result.returncode == 0, result.stdout + result.stderr
        assert endpoint.forms[0]["scope"] == "api://difflane/.default"
        secret.write_text("not-the-secret")
        refused = run_smoke(platform, *args, "--token-url", endpoint.url)
    finally:
        endpoint.close()
    assert refused.returncode == 1
    assert "token endpoint answered HTTP 401 invalid_client" in refused.stderr


def test_smoke_fails_on_a_refused_token(platform: Platform, provider: OidcProvider, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(provider.token(oid=new_oid(), tid="33333333-3333-4333-8333-333333333333"))  # not allowed
    result = run_smoke(platform, "--url", platform.url, "--token-file", str(token))
    assert result.returncode == 1
    assert "smoke: FAILED at catalog: GET /v1/models answered HTTP 401" in result.stdout


def test_smoke_fails_when_no_worker_runs_the_job(platform: Platform, provider: OidcProvider, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(provider.token(oid=new_oid()))
    args = [
        "--url",
        platform.url,
        "--token-file",
        str(token),
        "--model",
        "parked",
        "--timeout",
        "2",
        "--ready-timeout",
        "5",
    ]
    result = run_smoke(platform, *args)
    assert result.returncode == 1
    assert "smoke: FAILED at run: job " in result.stdout and "still queued after 2 s" in result.stdout


def test_smoke_fails_when_the_api_is_not_there(platform: Platform) -> None:
    result = run_smoke(platform, "--url", f"http://127.0.0.1:{free_port()}", "--ready-timeout", "1")
    assert result.returncode == 1
    assert "smoke: FAILED at ready: not ready within 1 s (ConnectError" in result.stdout


def test_an_image_that_is_not_what_the_job_says_fails() -> None:
    header = smoke.PNG_SIGNATURE + b"\x00\x00\x00\rIHDR" + (64).to_bytes(4, "big") + (32).to_bytes(4, "big")
    png = header + b"\x08\x02\x00\x00\x00" + b"\x00" * 4
    smoke.check_png(png, width=64, height=32)
    with pytest.raises(smoke.SmokeFailure, match="the image is 64x32, the job says 64x64"):
        smoke.check_png(png, width=64, height=64)
    with pytest.raises(smoke.SmokeFailure, match="not a PNG"):
        smoke.check_png(b"GIF89a" + png[6:], width=64, height=32)


def test_an_answer_not_shaped_like_difflane_fails_at_its_step() -> None:
    """Something else answering at the URL (a default backend, a proxy's page): exit 1, not a traceback."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status": "ok"}' if self.path == "/readyz" else b'{"models": [{"name": "x"}]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    lines: list[str] = []
    try:
        code = smoke.run(smoke.Options(url=f"http://127.0.0.1:{server.server_address[1]}"), say=lines.append)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    assert lines[-1] == "smoke: FAILED at catalog: unexpected answer (KeyError: 'defaults')"
