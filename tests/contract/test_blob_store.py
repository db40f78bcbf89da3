"""The BlobStore contract, against every implementation."""

from __future__ import annotations

from pathlib import Path

import pytest

from difflane.blobs.base import BlobStore
from difflane.blobs.local import LocalBlobStore
from difflane.errors import InvalidInput, NotFound
from difflane.testing import MemoryBlobStore
from tests import azurite


@pytest.fixture(params=["memory", "local", pytest.param("azure", marks=pytest.mark.integration)])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "azure":
        return azurite.blob_store()  # Blob Storage on Azurite
    return MemoryBlobStore() if request.param == "memory" else LocalBlobStore(tmp_path / "blobs")


def test_put_then_open_streams_the_bytes(blobs: BlobStore) -> None:
    data = bytes(range(256)) * 1000
    blobs.put("outputs/j1/0.png", data, "image/png")
    chunks = list(blobs.open("outputs/j1/0.png", chunk_size=4096))
    assert b"".join(chunks) == data and len(chunks) > 1


def test_put_overwrites(blobs: BlobStore) -> None:
    blobs.put("a/b", b"one", "text/plain")
    blobs.put("a/b", b"two", "text/plain")
    assert b"".join(blobs.open("a/b")) == b"two"


def test_open_missing_raises_not_found(blobs: BlobStore) -> None:
    with pytest.raises(NotFound):
        blobs.open("outputs/none/0.png")


def test_delete_is_idempotent(blobs: BlobStore) -> None:
    blobs.put("x/y", b"1", "text/plain")
    blobs.delete("x/y")
    blobs.delete("x/y")
    with pytest.raises(NotFound):
        blobs.open("x/y")


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../b", "a//b", "", "a/.hidden/..", "a\\b"])
def test_keys_cannot_escape(blobs: BlobStore, key: str) -> None:
    with pytest.raises(InvalidInput):
        blobs.put(key, b"x", "text/plain")


def test_ping_when_healthy(blobs: BlobStore) -> None:
    blobs.ping()
