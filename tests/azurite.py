"""Azurite (the Azure Storage emulator) for tests: found, or started once per test session.

``scripts/test`` starts Azurite and exports ``DIFFLANE_TEST_AZURITE_BLOB_ENDPOINT``. Run alone
(``pytest tests/contract``), this module starts the copy that ``scripts/azurite install`` put in
``.ci-cache/``. Without either, Azure tests skip, except under CI (``CI`` set), where they fail:
a green CI must have run them.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from difflane import azure_auth
from difflane.azure_io import Backoff, BlobIO
from difflane.blobs.azure import AzureBlobStore
from difflane.settings import Settings
from difflane.store.azure_blob import AzureBlobJobStore

ENV = "DIFFLANE_TEST_AZURITE_BLOB_ENDPOINT"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key, published in its README: not a secret.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_BIN = Path(__file__).resolve().parents[1] / ".ci-cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob"

# In memory, nothing on disk; the SDK is newer than the emulator; no network; unknown headers ignored.
_FLAGS = ("--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry", "--loose")
_endpoint: str | None = None


def connection_string(endpoint: str) -> str:
    return f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={endpoint};"


def endpoint() -> str:
    """The Blob endpoint of a running Azurite (``http://127.0.0.1:PORT/devstoreaccount1``)."""
    global _endpoint
    if _endpoint is None:
        _endpoint = os.environ.get(ENV) or _start()
    return _endpoint


def _start() -> str:
    if not _BIN.exists():
        message = f"Azurite is not running ({ENV} unset) and not installed: run scripts/azurite install"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port), *_FLAGS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(proc.terminate)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return f"http://127.0.0.1:{port}/{ACCOUNT}"
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    pytest.fail("Azurite did not start within 30 s")


def new_container_name() -> str:
    return f"t{uuid.uuid4().hex[:20]}"


def settings(**changes: object) -> Settings:
    """Settings for the Azure store on this Azurite, in a fresh container."""
    values: dict[str, object] = {
        "store": "azure",
        "azure_storage_connection_string": connection_string(endpoint()),
        "azure_container": new_container_name(),
        "azure_create_container": True,
        "azure_retry_backoff_seconds": 0.01,
        "azure_timeout_seconds": 5,
    }
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


def blob_io(s: Settings | None = None, *, endpoint_url: str | None = None, create: bool = True) -> BlobIO:
    """A BlobIO on a fresh container (created); ``endpoint_url`` routes calls elsewhere (a proxy)."""
    s = s or settings()
    if endpoint_url is not None:
        s = s.model_copy(update={"azure_storage_connection_string": SecretStr(connection_string(endpoint_url))})
    service = azure_auth.blob_service(s)
    io = BlobIO(
        service.get_container_client(s.azure.azure_container),
        Backoff(retries=s.azure.azure_retries, first_s=s.azure.azure_retry_backoff_seconds),
        timeout_s=s.azure.azure_timeout_seconds,
    )
    if create:
        io.ensure_container()
    return io


def job_store(io: BlobIO | None = None) -> AzureBlobJobStore:
    return AzureBlobJobStore(io or blob_io())


def blob_store(io: BlobIO | None = None, **kwargs: Any) -> AzureBlobStore:
    return AzureBlobStore(io or blob_io(), **kwargs)
