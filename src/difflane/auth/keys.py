"""An identity provider's metadata and signing keys, cached, refreshed without flooding it.

One ``KeySource`` per metadata document (for Entra: one per accepted token version). A token
with a known ``kid`` is served from memory. An unknown ``kid`` may trigger one refetch, but at
most once per ``min_refresh_seconds`` however many such tokens arrive, so a flood of made-up
key ids costs the provider nothing. Fetches run in a worker thread, never on the event loop, and
one thread fetches while the others wait for its result.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import RSAAlgorithm

from difflane.errors import Unavailable

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 1024 * 1024
MIN_RSA_BITS = 2048
# After a failed fetch, requests fail fast (503) for this long instead of each one retrying.
FAILURE_BACKOFF_S = 10.0

Fetch = Callable[[str], Mapping[str, Any]]  # GET a JSON object (blocking); raises FetchError


class FetchError(Exception):
    pass


def http_fetch(timeout: float) -> Fetch:
    """GET over httpx: no redirects, bounded size, JSON objects only."""

    def fetch(url: str) -> Mapping[str, Any]:
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False) as client:
                response = client.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise FetchError(f"{url}: {exc}") from exc
        if response.status_code != 200:
            raise FetchError(f"{url}: HTTP {response.status_code}")
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise FetchError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            data = json.loads(response.content)
        except ValueError as exc:
            raise FetchError(f"{url}: not JSON") from exc
        if not isinstance(data, dict):
            raise FetchError(f"{url}: not a JSON object")
        return data

    return fetch


def is_loopback_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> str:
    """https, or http to a loopback host (tests, local development): anything else is refused."""
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise ValueError(f"{what} must be an https URL, got {url!r}")
    if parts.scheme == "http" and not is_loopback_url(url):
        raise ValueError(f"{what} must use https (plain http only for a loopback address), got {url!r}")
    return url


@dataclasses.dataclass(frozen=True)
class Snapshot:
    issuer: str  # as the metadata says; Entra's multi-tenant documents hold a "{tenantid}" template
    keys: Mapping[str, RSAPublicKey]
    fetched_at: float


class KeySource:
    def __init__(
        self,
        metadata_url: str,
        fetch: Fetch,
        *,
        min_refresh_seconds: float = 300.0,
        max_age_seconds: float = 86400.0,
        expected_issuer: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metadata_url = check_url(metadata_url, "identity metadata URL")
        self._fetch = fetch
        self.min_refresh_seconds = min_refresh_seconds
        self.max_age_seconds = max_age_seconds
        self.expected_issuer = expected_issuer  # oidc: the metadata must name exactly this issuer
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._last_attempt = -math.inf

    async def lookup(self, kid: str) -> tuple[str, RSAPublicKey | None]:
        """(the metadata's issuer, the key named ``kid`` or None when it is not published)."""
        snapshot, attempt = self._snapshot, self._last_attempt
        now = self._clock()
        fresh = snapshot is not None and now - snapshot.fetched_at < self.max_age_seconds
        if fresh and snapshot is not None and kid in snapshot.keys:
            return snapshot.issuer, snapshot.keys[kid]
        if self._may_refresh(snapshot, fresh, now, attempt):
            snapshot = await anyio.to_thread.run_sync(self._refresh, attempt)
        if snapshot is None:
            raise Unavailable("the identity provider's metadata cannot be fetched", retry_after=int(FAILURE_BACKOFF_S))
        return snapshot.issuer, snapshot.keys.get(kid)

    def _may_refresh(self, snapshot: Snapshot | None, fresh: bool, now: float, attempt: float) -> bool:
        # Missing or stale keys: retry a failing provider every few seconds. An unknown kid
        # with fresh keys: at most once per min_refresh_seconds, whatever the request rate.
        gap = FAILURE_BACKOFF_S if snapshot is None or not fresh else self.min_refresh_seconds
        return now - attempt >= gap

    def _refresh(self, seen_attempt: float) -> Snapshot | None:
        with self._lock:
            if self._last_attempt != seen_attempt:
                return self._snapshot  # another request refreshed while this one waited
            self._last_attempt = self._clock()
            try:
                snapshot = self._load()
            except (FetchError, ValueError) as exc:
                kept = "the keys it had" if self._snapshot is not None else "no keys"
                log.warning("identity provider fetch failed (%s); keeping %s", exc, kept)
                return self._snapshot
            self._snapshot = snapshot
            log.info("identity provider keys loaded from %s: %d key(s)", self.metadata_url, len(snapshot.keys))
            return snapshot

    def _load(self) -> Snapshot:
        metadata = self._fetch(self.metadata_url)
        issuer = metadata.get("issuer")
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(issuer, str) or not issuer:
            raise ValueError(f"{self.metadata_url}: no issuer")
        if self.expected_issuer is not None and issuer != self.expected_issuer:
            # OpenID Connect Discovery 4.3: the document must name the issuer it was fetched for.
            raise ValueError(f"{self.metadata_url}: issuer {issuer!r} is not {self.expected_issuer!r}")
        if not isinstance(jwks_uri, str):
            raise ValueError(f"{self.metadata_url}: no jwks_uri")
        check_url(jwks_uri, "jwks_uri")
        return Snapshot(issuer, parse_jwks(self._fetch(jwks_uri)), self._clock())


def parse_jwks(document: Mapping[str, Any]) -> dict[str, RSAPublicKey]:
    """The RSA signing keys of a JWKS document, by kid; keys of other kinds or uses are skipped."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("JWKS has no 'keys' list")
    keys: dict[str, RSAPublicKey] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
            continue
        if entry.get("alg", "RS256") != "RS256":
            continue
        try:
            key = RSAAlgorithm.from_jwk(entry)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("skipping an unreadable key %r in the JWKS: %s", kid, exc)
            continue
        if not isinstance(key, RSAPublicKey) or key.key_size < MIN_RSA_BITS:
            continue
        keys[kid] = key
    return keys
