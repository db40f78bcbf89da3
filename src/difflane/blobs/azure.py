"""Result images in Azure Blob Storage, with optional short-lived read-only URLs (SAS).

A signed URL grants ``read`` on exactly one blob until ``now + ttl`` (``ttl`` capped by the
setting), and nothing else. Two ways to sign:

- **user delegation** (Azure, workload identity): a user delegation key fetched with the pod's
  Entra ID token (role *Storage Blob Delegator*) signs the SAS; no account key exists in the
  cluster. One key is cached and replaced well before it expires.
- **account key** (Azurite, development): the connection string's key signs it.

Without signing, ``signed_url`` returns None and the API streams the blob after its own
authorization. A failure to get a delegation key also returns None (the API then streams),
because a job's JSON must not fail because a URL could not be signed.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol
from urllib.parse import quote

from azure.storage.blob import BlobSasPermissions, UserDelegationKey, generate_blob_sas

from difflane.azure_io import BlobIO, counted
from difflane.blobs.base import check_key
from difflane.errors import NotFound, Unavailable

log = logging.getLogger(__name__)

_SKEW = dt.timedelta(minutes=5)  # clocks disagree: a SAS starts a little in the past
_FETCH_BACKOFF = dt.timedelta(seconds=30)
_KEY_LIFETIME = dt.timedelta(hours=2)
_KEY_RENEW_BEFORE = dt.timedelta(minutes=30)  # longer than any URL's TTL (at most one hour)


class Signer(Protocol):
    def sign(self, blob_name: str, expiry: dt.datetime, now: dt.datetime) -> str:
        """The SAS query string (no leading '?') granting read on one blob until ``expiry``."""
        ...


class AccountKeySigner:
    def __init__(self, account_name: str, container: str, account_key: str) -> None:
        self.account_name = account_name
        self.container = container
        self._key = account_key

    def sign(self, blob_name: str, expiry: dt.datetime, now: dt.datetime) -> str:
        return generate_blob_sas(
            self.account_name,
            self.container,
            blob_name,
            account_key=self._key,
            permission=BlobSasPermissions(read=True),
            expiry=expiry,
            start=now - _SKEW,
        )


class UserDelegationSigner:
    """Signs with a user delegation key, fetched through ``fetch_key(start, expiry)`` and cached."""

    def __init__(
        self,
        account_name: str,
        container: str,
        fetch_key: Callable[[dt.datetime, dt.datetime], UserDelegationKey],
        *,
        https_only: bool = True,
    ) -> None:
        self.account_name = account_name
        self.container = container
        self._fetch_key = fetch_key
        self._https_only = https_only
        self._key: UserDelegationKey | None = None
        self._key_expiry: dt.datetime | None = None
        self._failed_until: dt.datetime | None = None  # after a failed fetch: don't hammer the service
        self._lock = threading.Lock()

    def sign(self, blob_name: str, expiry: dt.datetime, now: dt.datetime) -> str:
        return generate_blob_sas(
            self.account_name,
            self.container,
            blob_name,
            user_delegation_key=self._delegation_key(now),
            permission=BlobSasPermissions(read=True),
            expiry=expiry,
            start=now - _SKEW,
            protocol="https" if self._https_only else None,
        )

    def _delegation_key(self, now: dt.datetime) -> UserDelegationKey:
        with self._lock:
            usable = self._key is not None and self._key_expiry is not None and self._key_expiry > now + _SKEW
            due = not usable or (self._key_expiry is not None and self._key_expiry - now < _KEY_RENEW_BEFORE)
            if due and (self._failed_until is None or now >= self._failed_until):
                expiry = now + _KEY_LIFETIME
                try:
                    self._key = self._fetch_key(now - _SKEW, expiry)
                    self._key_expiry = expiry
                    self._failed_until = None
                except Exception:
                    # One failure must not turn every rendered output into another blocking
                    # fetch: back off, keep signing with the old key while it is still valid.
                    self._failed_until = now + _FETCH_BACKOFF
                    if not usable:
                        raise
            elif not usable:
                raise Unavailable("no user delegation key (fetch failed recently)", retry_after=30)
            assert self._key is not None
            return self._key


class AzureBlobStore:
    def __init__(
        self,
        io: BlobIO,
        *,
        signer: Signer | None = None,
        max_ttl_seconds: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.io = io
        self.signer = signer
        self.max_ttl_seconds = max_ttl_seconds
        self._clock = clock

    def put(self, key: str, data: bytes, content_type: str) -> None:
        # A single Put Blob (images are far below the SDK's single-put size): readers see the old
        # bytes or the new, never a mix.
        self.io.put(check_key(key), data, content_type=content_type)

    def open(self, key: str, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        chunks = self.io.stream(check_key(key))
        if chunks is None:
            raise NotFound(f"blob {key} not found")
        return _rechunk(chunks, chunk_size)

    def signed_url(self, key: str, ttl_seconds: int) -> str | None:
        if self.signer is None:
            return None
        name = check_key(key)
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        expiry = now + dt.timedelta(seconds=max(1, min(ttl_seconds, self.max_ttl_seconds)))
        try:
            token = self.signer.sign(name, expiry, now)
        except Exception:  # no URL is better than a failed job read: the API streams
            log.warning("could not sign a result URL; the API will stream it", exc_info=True)
            return None
        return f"{self.io.container.url}/{quote(name)}?{token}"

    def delete(self, key: str) -> None:
        self.io.delete(check_key(key))

    def ping(self) -> None:
        self.io.ping()


def _rechunk(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """The caller's chunk size from the SDK's (4 MiB) downloads; each byte is copied once or twice."""
    pending = b""
    for chunk in chunks:
        data = pending + chunk if pending else chunk
        end = len(data) - len(data) % size
        for i in range(0, end, size):
            yield data[i : i + size]
        pending = data[end:]
    if pending:
        yield pending


def delegation_key_fetcher(service: Any) -> Callable[[dt.datetime, dt.datetime], UserDelegationKey]:
    """``BlobServiceClient.get_user_delegation_key`` as a fetcher (needs Storage Blob Delegator)."""

    def fetch(start: dt.datetime, expiry: dt.datetime) -> UserDelegationKey:
        counted("GetUserDelegationKey")
        key: UserDelegationKey = service.get_user_delegation_key(start, expiry, timeout=10)
        return key

    return fetch
