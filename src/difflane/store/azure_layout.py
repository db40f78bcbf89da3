"""Blob names of the Azure store: tenants apart, listing newest first by prefix.

```
t/<tenant>/s/<subject>/jobs/<day>/<inv-id>        the job record (JSON), metadata: state, version, lane
t/<tenant>/s/<subject>/versions/<id>/<version>    every written version but a final one (the event stream's source)
t/<tenant>/s/<subject>/idempotency/<sha256(key)>  create-only: {fingerprint, job_id}
ids/<id>                                           create-only: which owner a job id belongs to
lanes/<lane>/running/<id>                          marker while the job runs (backlog = messages - running)
unfinished/<tenant>/<subject>/<id>                 marker while the job is queued or running, metadata:
                                                   state, version, lane, record (the index of unfinished jobs)
outbox/<id>                                        accepted but not yet dispatched (the sweeper's work list)
outputs/<id>/<attempt>/<n>.png                     results (the BlobStore's keys), one folder per attempt
```

Blob listing is in ascending name order and cannot start from a given name on Azurite (the
service's ``startFrom`` is newer than the emulator), so the order is put into the names:
``<day>`` is 99999 minus the day of the id's timestamp and ``<inv-id>`` the id with every hex
digit inverted (``f - d``). Ascending names are then newest days first and, within a day, newest
ids first. A cursor (``before=<id>``) lists its own day from the start, skipping the names up to
its own, then the older days one by one: the cost of a page is bounded by one day's jobs of one
principal, not by their whole history.

Tenant and subject are escaped into one path segment each (``~XX`` for any byte outside
``[A-Za-z0-9_-]``), so no principal's prefix is another's, whatever characters they use.
"""

from __future__ import annotations

import hashlib

from difflane.jobs import Principal

# No "." either: a segment "." or ".." could be normalised away by something on the HTTP path.
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_MAX_SEGMENT = 200  # names are at most 1024 characters; a longer identity is hashed
_INVERT = str.maketrans("0123456789abcdef", "fedcba9876543210")
_MS_PER_DAY = 86_400_000
_LAST_DAY = 99_999  # day 99999 after 1970 is the year 2243


def segment(text: str) -> str:
    """An injective escape of ``text`` into one blob path segment."""
    if not text:
        return "~"  # never produced by escaping (escapes are always ~XX)
    out = "".join(chr(b) if b in _SAFE else f"~{b:02X}" for b in text.encode("utf-8"))
    if len(out) > _MAX_SEGMENT:
        return "~h" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    return out


def owner_prefix(owner: Principal) -> str:
    return f"t/{segment(owner.tenant)}/s/{segment(owner.subject)}/"


def jobs_prefix(owner: Principal) -> str:
    return owner_prefix(owner) + "jobs/"


def id_millis(job_id: str) -> int:
    """The creation time (ms since the epoch) in a UUIDv7 id."""
    return int(job_id.replace("-", "")[:12], 16)


def day_key(job_id: str) -> str:
    return f"{_LAST_DAY - id_millis(job_id) // _MS_PER_DAY:05d}"


def invert(job_id: str) -> str:
    """Reverses the string order of ids (and undoes itself)."""
    return job_id.lower().translate(_INVERT)


def record_name(owner: Principal, job_id: str) -> str:
    return f"{jobs_prefix(owner)}{day_key(job_id)}/{invert(job_id)}"


def job_id_of_record(name: str) -> str:
    return invert(name.rsplit("/", 1)[-1])


def version_name(owner: Principal, job_id: str, version: int) -> str:
    return f"{owner_prefix(owner)}versions/{job_id}/{version:010d}"


def idempotency_name(owner: Principal, key: str) -> str:
    # Hashed: a key is up to 200 printable characters of the client's choosing.
    return f"{owner_prefix(owner)}idempotency/{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def pointer_name(job_id: str) -> str:
    return f"ids/{job_id}"


def running_prefix(lane: str) -> str:
    return f"lanes/{segment(lane)}/running/"


def running_name(lane: str, job_id: str) -> str:
    return running_prefix(lane) + job_id


UNFINISHED_PREFIX = "unfinished/"


def unfinished_prefix(owner: Principal) -> str:
    return f"{UNFINISHED_PREFIX}{segment(owner.tenant)}/{segment(owner.subject)}/"


def unfinished_name(owner: Principal, job_id: str) -> str:
    return unfinished_prefix(owner) + job_id


def unfinished_name_of_record(record: str) -> str | None:
    """The index entry a record name ``t/<tenant>/s/<subject>/jobs/<day>/<inv-id>`` has (None for
    a name that is not a record's): the escaped segments are reused as they are."""
    parts = record.split("/")
    if len(parts) != 7 or parts[0] != "t" or parts[2] != "s" or parts[4] != "jobs":
        return None
    return f"{UNFINISHED_PREFIX}{parts[1]}/{parts[3]}/{invert(parts[6])}"


OUTBOX_PREFIX = "outbox/"


def outbox_name(job_id: str) -> str:
    return OUTBOX_PREFIX + job_id
