"""Webhook delivery over real sockets: receivers on 127.0.0.1, TLS with the host name pinned to a
checked address, redirects not followed, timeouts, SSRF refusals, and a job end to end."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from difflane import wiring
from difflane.api.app import create_app
from difflane.settings import Settings
from difflane.testing import FakeRuntime
from difflane.webhooks.guard import Guard, system_resolver
from difflane.webhooks.sender import Sender
from difflane.webhooks.signing import Secret
from tests.oidc_provider import private_key
from tests.unit.conftest import Platform
from tests.webhook_receiver import Receiver, reply

pytestmark = pytest.mark.integration

SECRET_TEXT = Secret.generate()
SECRET = Secret.parse(SECRET_TEXT)
DEV_GUARD = Guard(["127.0.0.1", "hooks.test"], allow_http=True, allow_private=True)


# --- one attempt ------------------------------------------------------------------------------


def test_a_delivery_is_signed_per_standard_webhooks() -> None:
    with Receiver() as receiver:
        outcome = Sender(DEV_GUARD, SECRET).send("msg_1", receiver.url("/hook?tenant=a"), b'{"type":"job.completed"}')
        assert outcome.delivered and outcome.status == 204
        headers, body = receiver.received[0]
        assert body == b'{"type":"job.completed"}'
        assert headers["host"] == f"127.0.0.1:{receiver.port}" and headers["content-type"] == "application/json"
        assert headers["webhook-id"] == "msg_1" and headers["webhook-signature"].startswith("v1,")
        SECRET.verify(headers, body, now=int(time.time()))


@pytest.mark.parametrize("status", [500, 503, 429, 404])
def test_error_statuses_are_retryable_failures(status: int) -> None:
    with Receiver(lambda h: reply(h, status)) as receiver:
        outcome = Sender(DEV_GUARD, SECRET).send("msg_1", receiver.url(), b"{}")
        assert not outcome.delivered and outcome.retry and outcome.status == status


def test_a_redirect_is_not_followed() -> None:
    with Receiver() as target, Receiver(lambda h: reply(h, 302, {"Location": target.url("/stolen")})) as hop:
        outcome = Sender(DEV_GUARD, SECRET).send("msg_1", hop.url(), b"{}")
        assert not outcome.delivered and outcome.status == 302 and "redirect" in outcome.detail
        assert len(hop.received) == 1 and target.received == []


def test_a_slow_receiver_times_out() -> None:
    release = threading.Event()

    def stall(handler: BaseHTTPRequestHandler) -> None:
        release.wait(10)
        reply(handler, 204)

    with Receiver(stall) as receiver:
        try:
            outcome = Sender(DEV_GUARD, SECRET, timeout=0.3).send("msg_1", receiver.url(), b"{}")
        finally:
            release.set()
        assert not outcome.delivered and outcome.retry and outcome.detail == "timed out"


def test_a_closed_port_is_a_retryable_failure() -> None:
    with Receiver() as receiver:
        url = receiver.url()
    outcome = Sender(DEV_GUARD, SECRET).send("msg_1", url, b"{}")
    assert not outcome.delivered and outcome.retry


# --- SSRF over real sockets -------------------------------------------------------------------


def test_by_default_nothing_on_this_machine_is_reachable() -> None:
    with Receiver() as receiver:
        sender = Sender(Guard(["*"], allow_http=True), SECRET)
        for url in (
            receiver.url(),  # loopback literal
            receiver.url(host="localhost"),  # loopback by name
            f"http://[::ffff:127.0.0.1]:{receiver.port}/hook",
            f"http://0.0.0.0:{receiver.port}/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/hook",
        ):
            outcome = sender.send("msg_1", url, b"{}")
            assert not outcome.delivered and not outcome.retry and outcome.detail.startswith("refused"), url
        assert receiver.received == []


def test_a_dns_name_resolving_to_loopback_is_refused_after_resolution() -> None:
    """The name passes every check made without the network; the system resolver then says 127.0.0.1."""
    with Receiver() as receiver:
        guard = Guard(["*"], allow_http=True, resolver=lambda host, port: system_resolver("localhost", port))
        outcome = Sender(guard, SECRET).send("msg_1", receiver.url(host="hooks.example.com"), b"{}")
        assert not outcome.delivered and not outcome.retry and "not a public address" in outcome.detail
        assert receiver.received == []


# --- TLS: connect to the checked address, verify the certificate for the name ------------------


def _certificates(name: str, folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context for ``name``, client context trusting the test CA)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = private_key("test-ca"), private_key("test-leaf")
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "difflane test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*_pem_files(leaf, leaf_key, folder))
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


def _pem_files(cert: x509.Certificate, key: rsa.RSAPrivateKey, folder: Path) -> tuple[str, str]:
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(folder / "cert.pem"), str(folder / "key.pem")


def test_https_goes_to_the_checked_address_with_the_host_name_for_tls(tmp_path: Path) -> None:
    server_tls, client_tls = _certificates("hooks.test", tmp_path)
    guard = Guard(["hooks.test", "other.test"], allow_private=True, resolver=lambda h, p: ["127.0.0.1"])
    with Receiver().tls(server_tls) as receiver:
        sender = Sender(guard, SECRET, verify=client_tls)
        ok = sender.send("msg_1", receiver.url(scheme="https", host="hooks.test"), b"{}")
        assert ok.delivered, ok.detail
        assert receiver.received[0][0]["host"] == f"hooks.test:{receiver.port}"
        # The same address under a name the certificate does not hold: the TLS check fails.
        wrong = sender.send("msg_2", receiver.url(scheme="https", host="other.test"), b"{}")
        assert not wrong.delivered and wrong.retry and "certificate" in wrong.detail.lower(), wrong.detail
        assert len(receiver.received) == 1


# --- end to end: a job's events reach the receiver, signed and in order -------------------------


@pytest.fixture
def webhook_platform(tmp_path: Path) -> Iterator[Platform]:
    settings = Settings(
        store="memory",
        dispatch="memory",
        webhook_secret=SECRET_TEXT,  # type: ignore[arg-type]
        webhook_allowed_hosts=["127.0.0.1"],
        webhook_allow_http=True,
        webhook_allow_private_networks=True,
        webhook_state=tmp_path / "webhooks.db",
        public_url="https://difflane.example.com",
    )
    parts = wiring.build(settings)
    with TestClient(create_app(settings, components=parts)) as client:
        platform = Platform(client, parts, FakeRuntime(step_seconds=0.002))
        yield platform
        platform.stop_worker()


def test_a_job_sends_started_progress_and_completed(webhook_platform: Platform) -> None:
    with Receiver() as receiver:
        webhook_platform.start_worker()
        body = {
            "model": "tiny",
            "prompt": "a red fox",
            "steps": 3,
            "webhook": {"url": receiver.url(), "events": ["started", "progress", "completed"]},
        }
        r = webhook_platform.client.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(m["type"] == "job.completed" for m in receiver.messages()):
            time.sleep(0.02)
        messages = receiver.messages()
        types = [m["type"] for m in messages]
        assert types[0] == "job.started" and types[-1] == "job.completed", types
        assert set(types[1:-1]) <= {"job.progress"}
        steps = [m["data"]["step"] for m in messages if m["type"] == "job.progress"]
        assert steps == sorted(steps) and all(1 <= s <= 3 for s in steps)
        completed = messages[-1]["data"]
        assert completed["id"] == job_id and completed["state"] == "succeeded"
        assert completed["outputs"][0]["url"] == f"https://difflane.example.com/v1/jobs/{job_id}/outputs/0"
        ids = [headers["webhook-id"] for headers, _ in receiver.received]
        assert len(ids) == len(set(ids))
        now = int(time.time())
        for headers, raw in receiver.received:
            SECRET.verify(headers, raw, now=now)


def test_private_receivers_are_refused_unless_development_mode_allows_them(tmp_path: Path) -> None:
    settings = Settings(
        store="memory",
        dispatch="memory",
        webhook_secret=SECRET_TEXT,  # type: ignore[arg-type]
        webhook_allowed_hosts=["127.0.0.1"],
        webhook_allow_http=True,
        webhook_state=tmp_path / "w.db",
    )
    with TestClient(create_app(settings)) as client, Receiver() as receiver:
        body = {"model": "tiny", "prompt": "x", "webhook": {"url": receiver.url()}}
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "webhook_address_refused"


def test_ipaddress_module_agrees_with_our_reading_of_special_ranges() -> None:
    """Guards the assumptions the SSRF rules lean on, should a Python upgrade change them."""
    assert not ipaddress.ip_address("100.64.0.1").is_global
    assert not ipaddress.ip_address("169.254.169.254").is_global
    assert ipaddress.ip_address("93.184.216.34").is_global
