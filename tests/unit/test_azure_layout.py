"""Blob names of the Azure store: newest first by name, tenants apart, reversible."""

from __future__ import annotations

import random

from difflane.jobs import Principal, new_id
from difflane.store import azure_layout as layout
from tests.integration.azure_helpers import id_at

DAY = 86_400


def test_names_sort_newest_first_within_and_across_days() -> None:
    owner = Principal("contoso", "alice")
    start = 1_750_000_000.0
    times = [start + i * 0.0007 for i in range(50)] + [start + DAY * d + 5 for d in (1, 2, 30, 400)]
    ids = [id_at(t, n) for n, t in enumerate(times)]
    names = [layout.record_name(owner, i) for i in ids]
    assert sorted(names) == [layout.record_name(owner, i) for i in sorted(ids, reverse=True)]


def test_inverted_id_round_trips() -> None:
    job_id = new_id()
    assert layout.invert(layout.invert(job_id)) == job_id
    assert layout.job_id_of_record(layout.record_name(Principal("t", "s"), job_id)) == job_id


def test_day_key_is_the_ids_day_counted_down() -> None:
    a, b = id_at(1_750_000_000.0), id_at(1_750_000_000.0 + DAY)
    assert int(layout.day_key(a)) - int(layout.day_key(b)) == 1
    assert len(layout.day_key(a)) == 5


def test_segments_are_injective_and_safe() -> None:
    tricky = ["", "~", "~7E", "a/b", "a%2Fb", "..", "ünï", "a b", "A", "a", "x" * 300, "x" * 301]
    escaped = [layout.segment(t) for t in tricky]
    assert len(set(escaped)) == len(tricky)
    for e in escaped:
        assert "/" not in e and e not in ("", ".", "..") and len(e) <= 200


def test_owner_prefixes_never_nest() -> None:
    # A subject must not reach another principal's prefix (tenants cannot hold "/" at all).
    owners = [
        Principal("a", "b/s/c"),
        Principal("a", "s/b"),
        Principal("a", "b"),
        Principal("ab", ""),
        Principal("a~", "b"),
    ]
    prefixes = [layout.owner_prefix(o) for o in owners]
    for i, p in enumerate(prefixes):
        for j, q in enumerate(prefixes):
            if i != j:
                assert not q.startswith(p)


def test_random_principals_never_collide() -> None:
    rng = random.Random(5)
    alphabet = "ab/~%. -_Zé"
    seen: dict[str, Principal] = {}
    for _ in range(2000):
        owner = Principal(
            "".join(rng.choice(alphabet.replace("/", "")) for _ in range(rng.randint(1, 4))),
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4))),
        )
        prefix = layout.owner_prefix(owner)
        assert seen.setdefault(prefix, owner) == owner


def test_idempotency_names_hash_the_key() -> None:
    owner = Principal("t", "s")
    name = layout.idempotency_name(owner, "../../etc/passwd")
    assert name.startswith(layout.owner_prefix(owner) + "idempotency/") and ".." not in name
