"""Result URLs: a read-only SAS for exactly one blob that never outlives its TTL.

User delegation SAS is unreliable in Azurite, so its construction is checked here: the query
names the delegation key's identity, read only, one blob, and an expiry within the TTL. The
account-key kind is also fetched for real from Azurite (tests/integration/test_azure_blob.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.storage.blob import UserDelegationKey

from difflane.blobs.azure import AccountKeySigner, AzureBlobStore, UserDelegationSigner
from difflane.errors import InvalidInput

NOW = 1_800_000_000.0


class _Container:
    url = "https://acct.blob.core.windows.net/results"


class _Io:
    container = _Container()


def _key(expiry: dt.datetime) -> UserDelegationKey:
    key = UserDelegationKey()
    key.signed_oid = "11111111-1111-1111-1111-111111111111"
    key.signed_tid = "22222222-2222-2222-2222-222222222222"
    key.signed_start = "2027-01-15T00:00:00Z"
    key.signed_expiry = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
    key.signed_service = "b"
    key.signed_version = "2025-01-05"
    key.value = "c2VjcmV0LWtleS1ieXRlcy0wMTIzNDU2Nzg5YWJjZGVm"  # base64
    return key


def _store(signer: Any, ttl: int = 300, clock: Any = lambda: NOW) -> AzureBlobStore:
    return AzureBlobStore(_Io(), signer=signer, max_ttl_seconds=ttl, clock=clock)  # type: ignore[arg-type]


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _expiry(query: dict[str, str]) -> float:
    return dt.datetime.strptime(query["se"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def test_user_delegation_sas_reads_one_blob_until_the_ttl() -> None:
    fetched: list[tuple[dt.datetime, dt.datetime]] = []

    def fetch(start: dt.datetime, expiry: dt.datetime) -> UserDelegationKey:
        fetched.append((start, expiry))
        return _key(expiry)

    store = _store(UserDelegationSigner("acct", "results", fetch), ttl=300)
    url = store.signed_url("outputs/j1/0.png", 120)
    assert url is not None
    parts = urlsplit(url)
    assert parts.path == "/results/outputs/j1/0.png"
    q = _query(url)
    assert q["sp"] == "r" and q["sr"] == "b" and q["spr"] == "https"
    assert q["skoid"] == "11111111-1111-1111-1111-111111111111" and q["sktid"].startswith("2222")
    assert "sig" in q and "sk" not in q  # signed by the delegation key, no account key anywhere
    assert NOW < _expiry(q) <= NOW + 120


def test_ttl_is_capped_by_the_setting() -> None:
    store = _store(UserDelegationSigner("acct", "results", lambda s, e: _key(e)), ttl=60)
    url = store.signed_url("outputs/j1/0.png", 3600)
    assert url is not None and _expiry(_query(url)) <= NOW + 60


def test_delegation_key_is_cached_and_renewed_before_it_runs_out() -> None:
    calls: list[dt.datetime] = []

    def fetch(start: dt.datetime, expiry: dt.datetime) -> UserDelegationKey:
        calls.append(expiry)
        return _key(expiry)

    clock = [NOW]
    store = _store(UserDelegationSigner("acct", "results", fetch), clock=lambda: clock[0])
    for _ in range(5):
        store.signed_url("outputs/j1/0.png", 300)
    assert len(calls) == 1
    clock[0] += 2 * 3600  # the cached key is about to expire: the next URL gets a new one
    store.signed_url("outputs/j1/0.png", 300)
    assert len(calls) == 2
    # every URL ends before the key that signed it
    assert calls[-1].timestamp() >= clock[0] + 300


def test_a_failing_key_fetch_means_no_url_not_an_error() -> None:
    def fetch(start: dt.datetime, expiry: dt.datetime) -> UserDelegationKey:
        raise RuntimeError("token endpoint down")

    assert _store(UserDelegationSigner("acct", "results", fetch)).signed_url("outputs/j1/0.png", 60) is None


def test_account_key_sas() -> None:
    store = _store(AccountKeySigner("acct", "results", "a2V5LWJ5dGVz"))
    q = _query(store.signed_url("outputs/j1/0.png", 100) or "")
    assert q["sp"] == "r" and q["sr"] == "b" and NOW < _expiry(q) <= NOW + 100 and "skoid" not in q


def test_no_signer_means_the_api_streams() -> None:
    assert _store(None).signed_url("outputs/j1/0.png", 60) is None


def test_keys_are_checked_before_signing() -> None:
    with pytest.raises(InvalidInput):
        _store(AccountKeySigner("acct", "results", "a2V5")).signed_url("../other/0.png", 60)


def test_a_failing_key_fetch_is_not_retried_on_every_url() -> None:
    """Rendering a page of outputs must not turn one outage into one blocking fetch per URL."""
    calls: list[float] = []
    clock = [NOW]
    failing = [True]

    def fetch(start: dt.datetime, expiry: dt.datetime) -> UserDelegationKey:
        calls.append(clock[0])
        if failing[0]:
            raise OSError("identity endpoint down")
        return _key(expiry)

    store = _store(UserDelegationSigner("acct", "results", fetch), clock=lambda: clock[0])
    assert [store.signed_url(f"outputs/j1/{i}.png", 300) for i in range(20)] == [None] * 20
    assert len(calls) == 1  # then backing off
    failing[0] = False
    clock[0] += 60  # past the back-off: the next URL fetches again, and signs
    assert store.signed_url("outputs/j1/0.png", 300) is not None
    assert len(calls) == 2


def test_a_refresh_failure_keeps_signing_with_the_still_valid_key() -> None:
    clock = [NOW]
    failing = [False]

    def fetch(start: dt.datetime, expiry: dt.datetime) -> UserDelegationKey:
        if failing[0]:
            raise OSError("identity endpoint down")
        return _key(expiry)

    store = _store(UserDelegationSigner("acct", "results", fetch), clock=lambda: clock[0])
    assert store.signed_url("outputs/j1/0.png", 300) is not None
    failing[0] = True
    clock[0] += 100 * 60  # inside the renewal window, the key is still valid for ~20 minutes
    assert store.signed_url("outputs/j1/0.png", 300) is not None
