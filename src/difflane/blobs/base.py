"""The BlobStore seam: put, stream, sign, delete. Keys are '/'-separated relative paths."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol

from difflane.errors import InvalidInput

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class BlobStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write (or overwrite) the blob atomically: readers see the old or the new bytes."""
        ...

    def open(self, key: str, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """Stream the blob's bytes; raises NotFound before yielding when it does not exist."""
        ...

    def signed_url(self, key: str, ttl_seconds: int) -> str | None:
        """A short-lived read-only URL for one blob, or None when this store cannot sign."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; a missing blob is not an error."""
        ...

    def ping(self) -> None: ...


def check_key(key: str) -> str:
    """Refuse keys that could escape a prefix (``..``, absolute paths, odd characters)."""
    parts = key.split("/")
    if not parts or not all(_SEGMENT.match(p) for p in parts) or any(p in (".", "..") for p in parts):
        raise InvalidInput(f"invalid blob key: {key!r}", code="invalid_blob_key")
    return key


def output_key(job_id: str, index: int, *, attempt: int) -> str:
    """Each attempt writes its own keys: a late upload by a worker that lost its lease can
    never overwrite the images another attempt's record points to."""
    return f"outputs/{job_id}/{attempt}/{index}.png"
