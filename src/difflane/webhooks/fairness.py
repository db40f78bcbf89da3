"""Which due deliveries go out now, so that one slow receiver cannot hold every sender thread.

A receiver that answers slowly (or dribbles a byte a second) keeps a sender thread for a whole
attempt deadline. Without a bound, a tenant with many jobs pointing at such an endpoint fills
the pool and every other tenant's webhooks wait behind it. So each destination host and each
job owner may have only a few attempts in flight at once, and the free threads are handed out
round-robin: every host's and owner's first delivery before anyone's second.

Both outboxes (SQLite and Blob) list their due candidates and call ``pick``; attempts already in
flight (claimed, not yet settled, by any notifier sharing the outbox) count against the caps.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit


@dataclasses.dataclass(frozen=True)
class Caps:
    per_host: int = 2  # attempts in flight to one receiver host
    per_owner: int = 2  # attempts in flight for one job owner (tenant/subject)


DEFAULT_CAPS = Caps()


@dataclasses.dataclass(frozen=True)
class Candidate:
    id: str
    host: str
    owner: str
    next_at: float


def host_of(url: str) -> str:
    """The key receivers are grouped by: the URL's host, lower-case (ports share a host)."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def pick(
    candidates: Iterable[Candidate],
    *,
    limit: int,
    caps: Caps,
    busy_hosts: Mapping[str, int],
    busy_owners: Mapping[str, int],
) -> list[str]:
    """Up to ``limit`` candidate ids, fair across hosts and owners, within the caps."""
    if limit <= 0:
        return []
    hosts, owners = Counter(busy_hosts), Counter(busy_owners)
    chosen: list[str] = []
    for candidate in _round_robin(candidates):
        if hosts[candidate.host] >= caps.per_host or owners[candidate.owner] >= caps.per_owner:
            continue
        hosts[candidate.host] += 1
        owners[candidate.owner] += 1
        chosen.append(candidate.id)
        if len(chosen) == limit:
            break
    return chosen


def _round_robin(candidates: Iterable[Candidate]) -> Sequence[Candidate]:
    """Oldest first within each host and owner; each one's n-th before anyone's (n+1)-th."""
    by_age = sorted(candidates, key=lambda c: c.next_at)
    host_rank: Counter[str] = Counter()
    owner_rank: Counter[str] = Counter()
    ranked = []
    for c in by_age:
        host_rank[c.host] += 1
        owner_rank[c.owner] += 1
        ranked.append((max(host_rank[c.host], owner_rank[c.owner]), c.next_at, c))
    return [c for _, _, c in sorted(ranked, key=lambda r: (r[0], r[1]))]


def count(keys: Iterable[str]) -> dict[str, int]:
    """Attempts in flight per key, from the keys of the claimed deliveries."""
    return dict(Counter(keys))
